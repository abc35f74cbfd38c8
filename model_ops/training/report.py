"""Write the training report (markdown + pictures) from a finished run folder and an ``ats-eval`` table.

``python -m model_ops.training.report --run-dir runs/megapixel-digits-v2 --version-dir
models/megapixel-digits/2 --eval eval.md --notes bench/results/training/notes.md`` copies the
run's PNG pictures next to the report and tabulates every stage: its data,
epochs, learning rate, wall time and last-epoch metrics; ``--notes`` appends
a hand-written markdown section (history of the run, caveats).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil

from model_ops.training.cli import TRAINERS
from model_ops.training.plots import read_log

_STAGE_DATA = {
    "features": ("{feature_canvases} canvases -> 50x50 crops (digits, strokes, background)", "feature"),
    "attention": ("{attention_canvases} low-resolution views, digit-location targets", "attention"),
    "finetune": (
        "{finetune_canvases} new full canvases per epoch, attention sampling end to end",
        "finetune",
    ),
}


def _metrics(log: dict[str, list[float]]) -> str:
    keys = [k for k in log if k not in ("epoch", "learning_rate")]
    return ", ".join(f"{k} {log[k][-1]:.4f}" for k in keys)


def write_report(
    run_dir: pathlib.Path, version_dir: str, eval_table: str, out: pathlib.Path, notes: str = ""
) -> None:
    recipe = json.loads((run_dir / "recipe.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    pictures = out.parent / out.stem
    pictures.mkdir(parents=True, exist_ok=True)
    rows = [
        "| stage | data | epochs | learning rate | wall time | last epoch |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    images = []
    for stage in TRAINERS:
        data, prefix = _STAGE_DATA[stage]
        log = read_log(run_dir / stage / "log.csv")
        rows.append(
            f"| {stage} | {data.format(**recipe)} | {len(log['epoch'])} | {recipe[prefix + '_lr']:g} "
            f"| {summary['stage_seconds'][stage] / 60:.1f} min | {_metrics(log)} |"
        )
        shutil.copy(run_dir / stage / "curves.png", pictures / f"{stage}_curves.png")
        images.append(f"![{stage} curves]({pictures.name}/{stage}_curves.png)")
    shutil.copy(run_dir / "attention.png", pictures / "attention.png")
    text = [
        f"# Training report: megapixel digits, `{version_dir}`",
        "",
        f"Command: `ats-train megapixel-digits --run-dir {run_dir.as_posix()} --export {version_dir}` "
        f"(batch {recipe['batch_size']}, seed {recipe['seed']}); "
        f"machine: {os.cpu_count()} CPU cores shared with other work, Python {platform.python_version()}.",
        "",
        f"**Total training wall time: {summary['total_seconds'] / 60:.1f} min.**",
        "",
        *rows,
        "",
        "## Test accuracy (`ats-eval`)",
        "",
        eval_table.strip(),
        "",
        "## Curves",
        "",
        *images,
        "",
        "## Attention on test canvases",
        "",
        "Left: the canvas; right: its attention map; green: the patches `predict_image` sampled.",
        "",
        f"![attention]({pictures.name}/attention.png)",
        "",
        notes.strip(),
        "",
    ]
    out.write_text("\n".join(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default="runs/megapixel-digits-v2")
    parser.add_argument(
        "--version-dir", default="models/megapixel-digits/2", help="where the run exported to"
    )
    parser.add_argument("--eval", required=True, help="markdown table written by ats-eval --markdown")
    parser.add_argument("--notes", default=None, help="markdown appended to the report")
    parser.add_argument("--out", default="bench/results/training.md")
    args = parser.parse_args(argv)
    notes = pathlib.Path(args.notes).read_text() if args.notes else ""
    write_report(
        pathlib.Path(args.run_dir),
        args.version_dir,
        pathlib.Path(args.eval).read_text(),
        pathlib.Path(args.out),
        notes,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
