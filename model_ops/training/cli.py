"""``ats-train TASK``: run a recipe, draw its pictures, export the model.

Tasks: ``megapixel-digits`` (one level, :mod:`model_ops.training.recipe`) and
``gigapixel-digits`` (two levels over 10k-100k canvases,
:mod:`model_ops.training.gigapixel`). Everything goes to ``--run-dir``
(per-stage CSV logs, Keras backups, stage weights, PNG curves, attention
pictures, ``summary.json``); ``--resume`` continues an interrupted run where
it stopped. ``--export`` writes the trained model as a served version
(``models/<name>/<version>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable, Iterable

import numpy as np

from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from model_ops.training import gigapixel
from model_ops.training import recipe as recipes
from model_ops.training.plots import plot_attention, plot_curves
from model_ops.training.run_dir import RunDir

TRAINERS = {
    "features": recipes.train_features,
    "attention": recipes.train_attention,
    "finetune": recipes.train_finetune,
}
N_PICTURES = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ats-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=["megapixel-digits", "gigapixel-digits"], help="what to train")
    parser.add_argument("--run-dir", default=None, help="folder of this run (default: runs/TASK)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every stage's data size and epochs (e.g. 0.01 for a smoke run)",
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--export", default=None, help="also export the model to this version directory")
    parser.add_argument(
        "--one-level-weights",
        default=gigapixel.ONE_LEVEL_WEIGHTS,
        help="gigapixel-digits: the megapixel-digits weights whose feature network, head and "
        "(as a start for the fine attention) attention network it reuses",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        default=1,
        choices=[0, 1, 2],
        help="Keras verbosity: 1 = progress bar, 2 = one line per epoch",
    )
    args = parser.parse_args(argv)
    args.run_dir = args.run_dir or f"runs/{args.task}"
    return args


def _recipe(args: argparse.Namespace, run: RunDir, recipe_cls: type, stages: Iterable[str]):
    """The recipe of this run.

    A resumed run must keep the settings of its finished stages; stages not
    yet finished take the current ones (so a later version can reuse the
    pretraining stages of an earlier run and train a longer fine-tune).
    """
    recipe = recipe_cls(seed=args.seed)
    if args.batch_size:
        recipe = dataclasses.replace(recipe, batch_size=args.batch_size)
    if args.scale != 1.0:
        recipe = recipe.scaled(args.scale)
    saved = run.root / "recipe.json"
    if saved.exists():
        previous = recipe_cls(**json.loads(saved.read_text()))
        changed = [
            stage
            for stage in stages
            if run.is_done(stage) and previous.stage_fields(stage) != recipe.stage_fields(stage)
        ]
        if changed:
            raise SystemExit(
                f"{saved} differs from the arguments given for the finished stage(s) "
                f"{', '.join(changed)}; resume with the same arguments"
            )
    saved.write_text(json.dumps(dataclasses.asdict(recipe), indent=2) + "\n")
    return recipe


def _run_stages(run: RunDir, nets, trainers: dict[str, Callable[[], dict]]) -> dict[str, float]:
    """Train the stages not yet done (loading the weights of those that are); returns seconds per stage."""
    for stage, train in trainers.items():
        if run.is_done(stage):
            nets.load(run.stage(stage) / "weights")
            print(f"[{stage}] already done, weights loaded", flush=True)
            continue
        print(f"[{stage}] training", flush=True)
        run.start_clock(stage)
        summary = train()
        seconds = run.finish(stage, nets, summary)
        plot_curves(run.stage(stage) / "log.csv", run.stage(stage) / "curves.png", stage)
        print(f"[{stage}] done in {seconds:.0f} s: {summary}", flush=True)
    return {stage: run.seconds(stage) for stage in trainers}


def draw_attention(run: RunDir, nets, spec: CanvasSpec, recipe: recipes.Recipe) -> pathlib.Path:
    """Attention maps and the patches ``predict_image`` samples, on a few validation canvases."""
    from model_ops.export import ServingFunctions

    metadata = recipes.model_metadata(spec, recipe)
    serve = ServingFunctions(recipes.attention_map_net(nets, spec), nets.features, nets.head, metadata)
    canvases, maps, offsets, titles = [], [], [], []
    for index in range(N_PICTURES):
        layout = make_layout(spec, "test", recipe.seed + 2, index)
        canvas = render_canvas(layout)
        out = serve.predict_image(canvas, np.int32(recipe.n_patches), np.int64(index), np.int32(0))
        probabilities = out["probabilities"].numpy()
        canvases.append(canvas)
        maps.append(out["attention"].numpy())
        offsets.append(out["offsets"].numpy())
        titles.append(
            f"test canvas {index}: label {layout.label}, predicted {probabilities.argmax()} "
            f"(p={probabilities.max():.2f}), {recipe.n_patches} sampled patches"
        )
    path = run.root / "attention.png"
    plot_attention(canvases, maps, offsets, tuple(metadata.patch_size), titles, path)
    return path


def _megapixel(args: argparse.Namespace, run: RunDir) -> dict[str, float]:
    spec = CanvasSpec()
    recipe = _recipe(args, run, recipes.Recipe, TRAINERS)
    nets = recipes.build_nets(spec)
    trainers = {
        stage: functools.partial(trainer, run, nets, spec, recipe, args.verbose)
        for stage, trainer in TRAINERS.items()
    }
    seconds = _run_stages(run, nets, trainers)
    draw_attention(run, nets, spec, recipe)
    if args.export:
        from model_ops.export import export_model

        export_model(
            recipes.attention_map_net(nets, spec),
            nets.features,
            nets.head,
            recipes.model_metadata(spec, recipe),
            args.export,
        )
        print(f"exported to {args.export}", flush=True)
    return seconds


def _gigapixel(args: argparse.Namespace, run: RunDir) -> dict[str, float]:
    from model_ops.training.gigapixel_plots import draw_two_level

    recipe = _recipe(args, run, gigapixel.GigapixelRecipe, gigapixel.TRAINERS)
    nets = gigapixel.build_nets(args.one_level_weights)
    trainers = {
        stage: functools.partial(trainer, run, nets, recipe, args.verbose)
        for stage, trainer in gigapixel.TRAINERS.items()
    }
    seconds = _run_stages(run, nets, trainers)
    metadata = gigapixel.model_metadata(recipe)
    draw_two_level(nets, metadata, recipe.seed + 2, run.root / "attention.png")
    if args.export:
        from model_ops.two_level_export import export_two_level_model

        export_two_level_model(*nets.map_nets(), nets.features, nets.head, metadata, args.export)
        print(f"exported to {args.export}", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = RunDir(args.run_dir)
    if not args.resume:
        run.fresh_start()
    run.root.mkdir(parents=True, exist_ok=True)
    seconds = (_gigapixel if args.task == "gigapixel-digits" else _megapixel)(args, run)
    total = sum(seconds.values())
    (run.root / "summary.json").write_text(
        json.dumps({"stage_seconds": seconds, "total_seconds": total}, indent=2) + "\n"
    )
    print(
        f"training wall time {total / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
