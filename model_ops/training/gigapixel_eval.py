"""Accuracy of a two-level version on fresh held-out gigapixel canvases, against K, N and the sampling mode.

Every canvas goes through :func:`model_ops.two_level_pipeline.run_two_level`
over the exported signatures (what a server runs) and a
:class:`~model_ops.datasets.gigapixel_digits.LayoutImage`, which renders
only what the pipeline reads: the coarse view, K region views and K x N
patches. No canvas is ever rendered whole. A network's output for a given
input is computed once per canvas and reused across the (K, N, mode) grid;
sampling uses the canvas index as its seed. With ``--jpeg-quality Q`` the
coarse view is made as a server makes it from the canvas written as a
JPEG-tiled pyramid at that quality
(:class:`~model_ops.datasets.gigapixel_digits.StoredLayoutImage`): region
views and patches stay exact, since JPEG on them changed no prediction.

``python -m model_ops.training.gigapixel_eval --model models/gigapixel-digits/3
--sides 10000 30000 100000 --canvases 200 --jpeg-quality 95 --markdown table.md``
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np
import tensorflow as tf

from model_ops.datasets.gigapixel_digits import LayoutImage, StoredLayoutImage, gigapixel_spec
from model_ops.datasets.megapixel_digits import make_layout
from model_ops.export import ModelMetadata, latest_version, load_model
from model_ops.sampling import MODES
from model_ops.two_level_pipeline import SavedModelStages, TwoLevelStages, run_two_level

DEFAULT_SEED = 1000  # training draws its test-split canvases from seeds 0..2


class MemoStages:
    """Stages that remember each network output by its input (per view or patch), for one canvas."""

    def __init__(self, stages: TwoLevelStages) -> None:
        self.stages = stages
        self.clear()

    def clear(self) -> None:
        self._coarse: tuple[bytes, tf.Tensor] | None = None
        self._memo: dict[tuple[str, bytes], tf.Tensor] = {}

    def coarse_attention(self, x_coarse: tf.Tensor) -> tf.Tensor:
        key = np.asarray(x_coarse).tobytes()
        if self._coarse is None or self._coarse[0] != key:
            self._coarse = (key, self.stages.coarse_attention(x_coarse))
        return self._coarse[1]

    def _each(self, name: str, items: np.ndarray) -> tf.Tensor:
        items = np.asarray(items)
        keys = [(name, item.tobytes()) for item in items]
        missing = [i for i, key in enumerate(keys) if key not in self._memo]
        if missing:
            outputs = getattr(self.stages, name)(tf.constant(items[missing]))
            self._memo.update({keys[i]: out for i, out in zip(missing, outputs, strict=True)})
        return tf.stack([self._memo[key] for key in keys])

    def fine_attention(self, views: tf.Tensor) -> tf.Tensor:
        return self._each("fine_attention", views)

    def features(self, patches: tf.Tensor) -> tf.Tensor:
        return self._each("features", patches)

    def head(self, features: tf.Tensor) -> tf.Tensor:
        return self.stages.head(features)


def evaluate(
    stages: TwoLevelStages,
    metadata: ModelMetadata,
    side: int,
    n_canvases: int,
    regions: list[int],
    patches: list[int],
    modes: list[str],
    seed: int = DEFAULT_SEED,
    jpeg_quality: int | None = None,
) -> dict[tuple[str, int, int], float]:
    """Accuracy per ``(mode, K, N)`` on canvases ``0..n-1`` of the test split of side ``side``."""
    memo = MemoStages(stages)
    spec = gigapixel_spec(side)
    grid = list(itertools.product(modes, regions, patches))
    correct = dict.fromkeys(grid, 0)
    for index in range(n_canvases):
        layout = make_layout(spec, "test", seed, index)
        image = LayoutImage(layout) if jpeg_quality is None else StoredLayoutImage(layout, jpeg_quality)
        memo.clear()
        for mode, k, n in grid:
            result = run_two_level(memo, image, metadata, k, n, mode, seed=index)
            correct[(mode, k, n)] += int(np.argmax(result.probabilities[0].numpy()) == layout.label)
    return {key: hits / n_canvases for key, hits in correct.items()}


def format_table(accuracy: dict[tuple[int, str, int, int], float], counts: dict[int, int]) -> str:
    """Markdown: one row per (canvas side, mode, N), one column per K."""
    ks = sorted({k for _, _, k, _ in accuracy})
    lines = [
        "| canvas | canvases | inference | N per region | " + " | ".join(f"K={k}" for k in ks) + " |",
        "| --- | ---: | --- | ---: | " + " | ".join("---:" for _ in ks) + " |",
    ]
    rows = sorted({(s, m, n) for s, m, _, n in accuracy}, key=lambda r: (r[0], MODES.index(r[1]), r[2]))
    for side, mode, n in rows:
        spec = gigapixel_spec(side)
        cells = " | ".join(f"{100 * accuracy[(side, mode, k, n)]:.1f}%" for k in ks)
        lines.append(f"| {spec.height}x{spec.width} | {counts[side]} | {mode} | {n} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=None,
        help="exported version directory (default: the newest of models/gigapixel-digits)",
    )
    parser.add_argument("--sides", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--canvases", type=int, nargs="+", default=[200], help="one count, or one per side")
    parser.add_argument("--regions", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--patches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="which fresh canvases")
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        help="coarse views as served from JPEG tiles of this quality (default: exact)",
    )
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    counts = dict(
        zip(
            args.sides,
            args.canvases * len(args.sides) if len(args.canvases) == 1 else args.canvases,
            strict=True,
        )
    )
    model, metadata = load_model(args.model or latest_version("models/gigapixel-digits"))
    stages = SavedModelStages(model)
    accuracy = {}
    for side in args.sides:
        start = time.perf_counter()
        found = evaluate(
            stages,
            metadata,
            side,
            counts[side],
            args.regions,
            args.patches,
            args.modes,
            args.seed,
            args.jpeg_quality,
        )
        accuracy.update({(side, *key): value for key, value in found.items()})
        print(f"{side}: {counts[side]} canvases in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    table = format_table(accuracy, counts)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
