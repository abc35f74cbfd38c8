"""Cost per image of attention sampling vs a CNN over the full image (1500x1500, batch 1).

Usage: ``python bench/bench_cost.py`` (writes ``bench/results/cost.md``).

Each model is measured in its own fresh process, one after the other and
alternating for ``--rounds`` rounds, on the same generated canvases:

- time: wall time of one call per image (uint8 canvas in, probabilities
  out), median over all timed images, after warm-up calls;
- memory: each model first runs twice on a small 256x256 canvas (the
  attention-sampling model with one patch), so that its graph is
  instantiated and optimised; then the kernel's peak mark
  (``VmHWM``) is reset and the peak resident set during all the 1500x1500
  calls is taken above the resident set at the reset. That is the memory a
  megapixel image costs, one-time set-up excluded for both. Both models
  start from the same uint8 canvases already in memory.

(a) is the exported model's ``predict_image`` (low view, attention,
sampling, patch op, features, estimator, head), (b) the full-image CNN of
``model_ops.training.networks`` with its uint8-to-float conversion inside
the same compiled function.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

from machine import describe

REPO = pathlib.Path(__file__).resolve().parents[1]
CHEAP_STRIDES = (2, 2, 2, 1)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current resident set."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _conv_macs(model) -> int:
    """Multiply-accumulates of the Conv2D layers of a built Keras model."""
    total = 0
    for layer in model.layers:
        if layer.__class__.__name__ == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c_out * kh * kw * layer.input.shape[-1]
    return total


def _worker(kind: str, model_dir: str, n_images: int, warmup: int, seed: int) -> dict:
    """Measure one model in this process; returns times (s), memory (MiB) and MACs."""
    import numpy as np
    import tensorflow as tf

    from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas

    spec = CanvasSpec()
    layouts = [make_layout(spec, "test", seed, i) for i in range(n_images)]
    canvases = [tf.constant(render_canvas(layout)) for layout in layouts]
    small = len(canvases)
    canvases.append(tf.constant(render_canvas(make_layout(CanvasSpec(256, 256, n_noise=5), "test", seed, 0))))
    if kind == "ats":
        from model_ops.export import MODE_SAMPLE, load_model
        from model_ops.training import networks

        model, metadata = load_model(model_dir)
        predict = model.signatures["predict_image"]

        def run(i: int):
            # one patch on the set-up canvas, so the patches' memory is charged to the measured calls
            n_patches = tf.constant(1 if i == small else metadata.n_patches, tf.int32)
            return predict(
                image=canvases[i],
                n_patches=n_patches,
                seed=tf.constant(i, tf.int64),
                mode=tf.constant(MODE_SAMPLE, tf.int32),
            )["probabilities"]

        macs = _conv_macs(networks.build_attention_net(spec.low_shape)) + metadata.n_patches * _conv_macs(
            networks.build_feature_net()
        )
    else:
        from model_ops.training import networks

        strides = CHEAP_STRIDES if kind == "cnn_cheap" else networks.BASELINE_STRIDES
        cnn = networks.build_full_image_cnn((None, None), strides=strides)
        fn = tf.function(
            lambda image: cnn(tf.cast(image, tf.float32)[None] / 255.0, training=False)[0],
            input_signature=[tf.TensorSpec([None, None, 1], tf.uint8)],
        )

        def run(i: int):
            return fn(canvases[i])

        macs = _conv_macs(networks.build_full_image_cnn((spec.height, spec.width), strides=strides))
    run(small).numpy()  # graph set-up on a small canvas, not charged to the megapixel calls
    run(small).numpy()
    _reset_peak()
    base_kb = _status_kb("VmRSS")
    for i in range(warmup):
        run(i % n_images).numpy()
    times, predictions = [], []
    for i in range(n_images):
        start = time.perf_counter()
        probabilities = run(i).numpy()
        times.append(time.perf_counter() - start)
        predictions.append(int(np.argmax(probabilities)))
    correct = sum(p == layout.label for p, layout in zip(predictions, layouts, strict=True))
    return {
        "times": times,
        "peak_mib": (_status_kb("VmHWM") - base_kb) / 1024,
        "rss_mib": base_kb / 1024,
        "macs": macs,
        "correct": correct,
        "n": n_images,
    }


def _measure(kind: str, args: argparse.Namespace) -> dict:
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            kind,
            "--model",
            args.model,
            "--images",
            str(args.images),
            "--warmup",
            str(args.warmup),
            "--seed",
            str(args.seed),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if done.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _versions() -> str:
    import keras
    import tensorflow as tf

    return describe(TensorFlow=tf.__version__, Keras=keras.__version__)


def _table(results: dict[str, list[dict]], args: argparse.Namespace, accuracy_note: str) -> str:
    version = pathlib.Path(args.model).resolve().relative_to(REPO).as_posix()
    names = {
        "ats": f"(a) attention sampling, `{version}` `predict_image`, 10 patches of 50x50",
        "cnn": "(b) full-image CNN, stride-2 stem (the baseline)",
        "cnn_cheap": "(b') full-image CNN, strides 2,2,2,1 (cheaper, coarser variant)",
    }
    summary = {}
    for kind, runs in results.items():
        times = [t for run in runs for t in run["times"]]
        summary[kind] = {
            "median_ms": 1000 * statistics.median(times),
            "peak_mib": statistics.median(run["peak_mib"] for run in runs),
            "rss_mib": statistics.median(run["rss_mib"] for run in runs),
            "gmacs": runs[0]["macs"] / 1e9,
            "accuracy": sum(r["correct"] for r in runs) / sum(r["n"] for r in runs),
        }
    ats = summary["ats"]
    lines = [
        "| model | median ms / image | time vs (a) | peak memory per image (MiB) | memory vs (a) "
        "| resident before (MiB) | conv GMACs / image | accuracy (timed canvases) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, s in summary.items():
        accuracy = f"{100 * s['accuracy']:.1f}%" if kind == "ats" else "not trained"
        lines.append(
            f"| {names[kind]} | {s['median_ms']:.1f} | {s['median_ms'] / ats['median_ms']:.1f}x "
            f"| {s['peak_mib']:.1f} | {s['peak_mib'] / max(ats['peak_mib'], 0.1):.1f}x "
            f"| {s['rss_mib']:.0f} | {s['gmacs']:.2f} | {accuracy} |"
        )
    return "\n".join(
        [
            "# Cost per image: attention sampling vs a CNN over the full image",
            "",
            f"Regenerate: `python bench/bench_cost.py` ({args.images} canvases of 1500x1500 per process, "
            f"batch 1, {args.warmup} warm-up calls, {args.rounds} alternating rounds of fresh processes).",
            "",
            f"Machine: {_versions()}. The CPU is shared with other work, so absolute times vary; "
            "both models ran in the same session, alternating.",
            "",
            *lines,
            "",
            "- Time: median wall time of one call, uint8 canvas in, class probabilities out.",
            "- Peak memory per image: each model (in its own process) first runs twice on a 256x256 canvas "
            "(the attention-sampling model with 1 patch) so its graph is set up; then the peak-RSS mark is "
            "reset (`/proc/self/clear_refs`) and the peak resident set during all the 1500x1500 calls is "
            "taken above the resident set at the reset (column 'resident before': imports, model, "
            "canvases).",
            f"- Accuracy: {accuracy_note}",
            "- The CNNs were not trained (random weights): training one on 1500x1500 canvases on 2 CPU "
            "cores was out of reach here, and its cost per image does not depend on its weights. (b) keeps "
            "the reference feature network's layers with a stride-2 stem so that digits stay legible (14 "
            "px); (b') strides every layer but the last, the cheapest plain CNN of that depth one could "
            "try, likely at a loss of accuracy.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="version directory (default: the latest of models/megapixel-digits)"
    )
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "cost.md"))
    parser.add_argument("--worker", choices=["ats", "cnn", "cnn_cheap"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model is None:
        from model_ops.export import latest_version

        args.model = str(latest_version(REPO / "models" / "megapixel-digits"))
    if args.worker:
        print(json.dumps(_worker(args.worker, args.model, args.images, args.warmup, args.seed)))
        return 0
    results: dict[str, list[dict]] = {"ats": [], "cnn": [], "cnn_cheap": []}
    for round_ in range(args.rounds):
        for kind in results:
            results[kind].append(_measure(kind, args))
            print(
                f"round {round_ + 1}: {kind} median "
                f"{1000 * statistics.median(results[kind][-1]['times']):.1f} ms",
                flush=True,
            )
    note = (
        f"of the attention-sampling model on the {args.images} timed canvases (sampling mode); see "
        "bench/results/training.md for 1000 canvases"
    )
    table = _table(results, args, note)
    pathlib.Path(args.out).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
