"""Megapixel digits: the Megapixel-MNIST protocol of the attention-sampling paper.

A black canvas (1500x1500 by default) holds 3 digits of the target class, 2
digits of other classes and 50 noise strokes, all 28x28 and no two within
28 px of each other on both axes; the label is the majority digit. A canvas
is a *layout* (object positions and sprites, a few kB) drawn from
``(seed, split, index)``; pixels are rendered only for the region asked for,
so a canvas of any size can be written tile by tile, and a training set is
never held in memory as full images.

Since objects never overlap, every pixel belongs to at most one object and a
region's area-downsampled pixels are sums of per-object block sums: pyramid
levels are rendered exactly without ever rendering level 0.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from model_ops.datasets.digits import DIGIT_SIZE, SPLITS, load_digit_sprites, sprites_by_class
from model_ops.datasets.strokes import stroke_pattern

NOISE = -1  # class id of a noise stroke in a layout


@dataclasses.dataclass(frozen=True)
class CanvasSpec:
    """Geometry of a canvas; the defaults are the reference protocol."""

    height: int = 1500
    width: int = 1500
    n_target: int = 3
    n_other: int = 2
    n_noise: int = 50
    low_scale: float = 0.12

    @property
    def low_shape(self) -> tuple[int, int]:
        """Size of the low-resolution view, ``round(H*s) x round(W*s)``."""
        return round(self.height * self.low_scale), round(self.width * self.low_scale)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Everything needed to render one canvas: object boxes and their sprites."""

    height: int
    width: int
    label: int
    ys: np.ndarray  # (n,) top rows
    xs: np.ndarray  # (n,) left columns
    classes: np.ndarray  # (n,) digit class, or NOISE
    sprites: np.ndarray  # (n, 28, 28) uint8

    @property
    def digit_centres(self) -> np.ndarray:
        """``(n_digits, 2)`` float centres (y, x) of the digits, in pixels."""
        digits = self.classes != NOISE
        half = DIGIT_SIZE / 2
        return np.stack([self.ys[digits] + half, self.xs[digits] + half], axis=1)


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _place(rng: np.random.Generator, n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rejection-sample ``n`` non-overlapping 28x28 boxes (no two within 28 px on both axes)."""
    if height < DIGIT_SIZE or width < DIGIT_SIZE:
        raise ValueError(f"canvas {height}x{width} is smaller than one {DIGIT_SIZE}px object")
    ys = np.empty(n, dtype=np.int64)
    xs = np.empty(n, dtype=np.int64)
    placed, tries = 0, 0
    max_tries = 1000 * n + 1000
    while placed < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(f"cannot place {n} objects on a {height}x{width} canvas")
        y = int(rng.integers(0, height - DIGIT_SIZE + 1))
        x = int(rng.integers(0, width - DIGIT_SIZE + 1))
        clash = (np.abs(ys[:placed] - y) < DIGIT_SIZE) & (np.abs(xs[:placed] - x) < DIGIT_SIZE)
        if not clash.any():
            ys[placed], xs[placed] = y, x
            placed += 1
    return ys, xs


def make_layout(spec: CanvasSpec, split: str, seed: int, index: int) -> Layout:
    """Draw canvas ``index`` of ``split``; the same arguments give the same canvas."""
    rng = np.random.default_rng([seed, _split_id(split), index])
    sprites, _ = load_digit_sprites(split)
    by_class = sprites_by_class(split)
    target = int(rng.integers(10))
    others = rng.choice([c for c in range(10) if c != target], size=spec.n_other)
    digit_classes = np.concatenate([np.full(spec.n_target, target), others]).astype(np.int64)
    digit_sprites = [sprites[rng.choice(by_class[c])] for c in digit_classes]
    noise_sprites = [stroke_pattern(rng) for _ in range(spec.n_noise)]
    n = len(digit_classes) + spec.n_noise
    ys, xs = _place(rng, n, spec.height, spec.width)
    classes = np.concatenate([digit_classes, np.full(spec.n_noise, NOISE)])
    all_sprites = (
        np.stack(digit_sprites + noise_sprites) if n else np.zeros((0, DIGIT_SIZE, DIGIT_SIZE), np.uint8)
    )
    return Layout(spec.height, spec.width, target, ys, xs, classes, all_sprites)


def level_shape(height: int, width: int, factor: int) -> tuple[int, int]:
    """Shape of a pyramid level downsampled by ``factor`` (partial blocks kept)."""
    return math.ceil(height / factor), math.ceil(width / factor)


def _block_sums(sprite: np.ndarray, y: int, x: int, factor: int) -> tuple[np.ndarray, int, int]:
    """Sums of ``sprite`` (placed at y, x) over the factor-aligned blocks it touches."""
    rows = (y + np.arange(sprite.shape[0])) // factor
    cols = (x + np.arange(sprite.shape[1])) // factor
    row_starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    col_starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
    sums = np.add.reduceat(np.add.reduceat(sprite.astype(np.int64), row_starts, axis=0), col_starts, axis=1)
    return sums, int(rows[0]), int(cols[0])


def _add_clipped(acc: np.ndarray, block: np.ndarray, y: int, x: int) -> None:
    """``acc[y:, x:] += block`` with the parts outside ``acc`` dropped."""
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + block.shape[0], acc.shape[0]), min(x + block.shape[1], acc.shape[1])
    if y0 < y1 and x0 < x1:
        acc[y0:y1, x0:x1] += block[y0 - y : y1 - y, x0 - x : x1 - x]


def render_region(
    layout: Layout, top: int, left: int, height: int, width: int, factor: int = 1
) -> np.ndarray:
    """Pixels ``[top:top+height, left:left+width]`` of the canvas downsampled by ``factor``.

    ``factor=1`` is the full-resolution canvas; ``factor=f`` is the exact area
    mean over ``f x f`` blocks (partial blocks at the right and bottom edges
    average only their pixels inside the canvas), rounded half up. Pixels
    outside the canvas are 0. Returns a ``(height, width)`` uint8 array.
    """
    if factor < 1 or height < 0 or width < 0:
        raise ValueError("factor must be >= 1 and the region size non-negative")
    y_lo, y_hi = top * factor, (top + height) * factor
    x_lo, x_hi = left * factor, (left + width) * factor
    hits = np.flatnonzero(
        (layout.ys < y_hi)
        & (layout.ys + DIGIT_SIZE > y_lo)
        & (layout.xs < x_hi)
        & (layout.xs + DIGIT_SIZE > x_lo)
    )
    if factor == 1:
        out = np.zeros((height, width), dtype=np.uint8)
        for i in hits:
            _add_clipped(out, layout.sprites[i], int(layout.ys[i]) - top, int(layout.xs[i]) - left)
        return out
    sums = np.zeros((height, width), dtype=np.int64)
    for i in hits:
        block, by, bx = _block_sums(layout.sprites[i], int(layout.ys[i]), int(layout.xs[i]), factor)
        _add_clipped(sums, block, by - top, bx - left)
    rows = np.clip(layout.height - (top + np.arange(height)) * factor, 0, factor)
    cols = np.clip(layout.width - (left + np.arange(width)) * factor, 0, factor)
    counts = np.maximum(rows[:, None] * cols[None, :], 1)
    return ((2 * sums + counts) // (2 * counts)).astype(np.uint8)


def render_canvas(layout: Layout) -> np.ndarray:
    """The full-resolution canvas as an ``(H, W, 1)`` uint8 array."""
    return render_region(layout, 0, 0, layout.height, layout.width)[..., None]
