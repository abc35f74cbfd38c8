"""Supervision the generator gives for free, for the pretraining stages of the recipe.

End-to-end attention sampling from scratch spends hundreds of epochs before
the attention finds the digits (the reference curve sits at chance until
epoch ~210). The generator knows where every digit is, so two cheap stages
come first:

- ``feature_crops``: 50x50 crops centred (with jitter) on digits, on noise
  strokes and on random background, labelled with the digit's class or
  ``NOT_A_DIGIT``; rendered from the layout alone, never from a full canvas;
- ``attention_targets``: for each canvas, a distribution over the cells of
  the attention map with equal mass on each digit, to fit the attention
  network to by cross-entropy;
- ``low_views``: the 180x180 views those maps belong to.
"""

from __future__ import annotations

import numpy as np

from model_ops.datasets.digits import DIGIT_SIZE
from model_ops.datasets.megapixel_digits import (
    NOISE,
    CanvasSpec,
    Layout,
    make_layout,
    render_canvas,
    render_region,
)

NOT_A_DIGIT = 10
_BACKGROUND_PER_CANVAS = 2


def _crop(layout: Layout, centre_y: float, centre_x: float, patch: tuple[int, int]) -> np.ndarray:
    top = round(centre_y - patch[0] / 2)
    left = round(centre_x - patch[1] / 2)
    return render_region(layout, top, left, patch[0], patch[1])


def feature_crops(
    spec: CanvasSpec,
    split: str,
    seed: int,
    n_canvases: int,
    patch: tuple[int, int] = (50, 50),
    jitter: float = 14.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops ``(M, ph, pw, 1)`` uint8 and labels ``(M,)`` from ``n_canvases`` layouts.

    Per canvas: every digit, as many noise strokes, and two random background
    points. The crop centre is the object's centre plus a uniform offset in
    ``[-jitter, jitter]`` per axis: sampled patches are centred on attention
    cells, which land anywhere on a digit.
    """
    rng = np.random.default_rng([seed, 1])
    crops, labels = [], []
    half = DIGIT_SIZE / 2
    for index in range(n_canvases):
        layout = make_layout(spec, split, seed, index)
        digits = np.flatnonzero(layout.classes != NOISE)
        noise = rng.choice(
            np.flatnonzero(layout.classes == NOISE), size=min(len(digits), spec.n_noise), replace=False
        )
        for i in np.concatenate([digits, noise]):
            dy, dx = rng.uniform(-jitter, jitter, size=2)
            crops.append(_crop(layout, layout.ys[i] + half + dy, layout.xs[i] + half + dx, patch))
            labels.append(int(layout.classes[i]) if layout.classes[i] != NOISE else NOT_A_DIGIT)
        for _ in range(_BACKGROUND_PER_CANVAS):
            y, x = rng.uniform(0, spec.height), rng.uniform(0, spec.width)
            crops.append(_crop(layout, y, x, patch))
            labels.append(NOT_A_DIGIT)
    return np.stack(crops)[..., None], np.asarray(labels, dtype=np.int64)


def low_views(layouts: list[Layout], low_shape: tuple[int, int], chunk: int = 16) -> np.ndarray:
    """``(B, h, w, 1)`` uint8 low-resolution views, rendering ``chunk`` canvases at a time."""
    from model_ops.lowres import low_resolution_view

    views = [
        np.asarray(
            low_resolution_view(np.stack([render_canvas(lay) for lay in layouts[i : i + chunk]]), low_shape)
        )
        for i in range(0, len(layouts), chunk)
    ]
    return np.concatenate(views)


def attention_targets(layouts: list[Layout], map_shape: tuple[int, int], radius: int = 0) -> np.ndarray:
    """``(B, Sh, Sw)`` float32 maps: each digit holds ``1 / n_digits``, spread over its cells.

    A cell covers ``H / Sh`` by ``W / Sw`` full-resolution pixels (the map
    spans the image, as with ``same`` padding and receptive field 0); a
    digit's mass is shared evenly by the ``(2 radius + 1)^2`` cells around
    the cell of its centre (at the 0.12 scale a digit spans about 3 cells;
    the recipe uses one cell, radius 0).
    """
    targets = np.zeros((len(layouts), *map_shape), dtype=np.float32)
    span = np.arange(-radius, radius + 1)
    for b, layout in enumerate(layouts):
        centres = layout.digit_centres
        rows = (centres[:, 0] * map_shape[0] / layout.height).astype(int)
        cols = (centres[:, 1] * map_shape[1] / layout.width).astype(int)
        for row, col in zip(rows, cols, strict=True):
            rr = np.clip(row + span, 0, map_shape[0] - 1)
            cc = np.clip(col + span, 0, map_shape[1] - 1)
            np.add.at(targets[b], np.ix_(rr, cc), 1.0 / (len(centres) * len(span) ** 2))
    return targets
