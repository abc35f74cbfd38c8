"""``ats-eval``: accuracy of an exported version on freshly generated test canvases.

Runs the version's own ``predict_image`` (what the server runs) on canvases
built from the test digits only, for sampling and for top-k inference and
for several numbers of patches, and prints one table.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import tensorflow as tf

from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from model_ops.export import MODE_SAMPLE, MODE_TOP_K, latest_version, load_model

MODES = {"sample": MODE_SAMPLE, "top_k": MODE_TOP_K}
DEFAULT_SEED = 1000  # training draws its test-split canvases from seeds 1 and 2


def evaluate(
    version_dir: str, n_canvases: int, patches: list[int], modes: list[str], seed: int = DEFAULT_SEED
) -> dict[tuple[str, int], float]:
    """Accuracy per ``(mode, n_patches)`` on canvases ``0..n-1`` of the test split under ``seed``.

    Sampling uses the canvas index as the seed, so results are reproducible.
    """
    model, _ = load_model(version_dir)
    predict = model.signatures["predict_image"]
    spec = CanvasSpec()
    correct = dict.fromkeys(itertools.product(modes, patches), 0)
    for index in range(n_canvases):
        layout = make_layout(spec, "test", seed, index)
        image = tf.constant(render_canvas(layout))
        for mode, n in correct:
            out = predict(
                image=image,
                n_patches=tf.constant(n, tf.int32),
                seed=tf.constant(index, tf.int64),
                mode=tf.constant(MODES[mode], tf.int32),
            )
            correct[(mode, n)] += int(np.argmax(out["probabilities"].numpy()) == layout.label)
    return {key: hits / n_canvases for key, hits in correct.items()}


def format_table(accuracy: dict[tuple[str, int], float], n_canvases: int) -> str:
    """Markdown table: one row per mode, one column per number of patches."""
    modes = sorted({m for m, _ in accuracy}, key=list(MODES).index)
    patches = sorted({n for _, n in accuracy})
    lines = [
        "| inference | " + " | ".join(f"{n} patches" for n in patches) + " |",
        "| --- | " + " | ".join("---:" for _ in patches) + " |",
    ]
    for mode in modes:
        lines.append(f"| {mode} | " + " | ".join(f"{100 * accuracy[(mode, n)]:.1f}%" for n in patches) + " |")
    lines.append(f"\nAccuracy on {n_canvases} fresh test canvases (test-split digits only).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ats-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=None,
        help="exported version directory (default: the latest of models/megapixel-digits)",
    )
    parser.add_argument("--canvases", type=int, default=1000)
    parser.add_argument("--patches", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="which fresh canvases")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    args.model = args.model or str(latest_version("models/megapixel-digits"))
    start = time.perf_counter()
    accuracy = evaluate(args.model, args.canvases, args.patches, args.modes, args.seed)
    table = format_table(accuracy, args.canvases)
    print(table)
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
