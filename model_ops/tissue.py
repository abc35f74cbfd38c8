"""Tissue masks: keep attention off the glass of a whole-slide image.

Most of a slide is empty glass, bright and grey; tissue is darker or
coloured. ``tissue_mask`` separates the two on a coarse view with Otsu's
threshold on a tissue score, cleans the mask with a small opening and
closing, and gives up (masks nothing) when it finds almost no tissue, so a
mask can never hide a whole image. ``cell_mask`` brings the pixel mask to
the attention map's cells, and ``masked_attention`` gives background cells
zero attention: sampling draws from ``log(a)``, so a zero cell has
probability exactly zero of being picked.

The mask is image preprocessing in numpy (the server and the trainer both
have the coarse view as pixels); ``masked_attention`` is TensorFlow so that
it can sit inside a model and pass gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# Below this share of tissue pixels the threshold found noise, not tissue: mask nothing.
MIN_TISSUE_FRACTION = 0.001
# Classes whose mean scores differ by less than this are one population split in
# two (the noise of empty glass), not tissue and glass: mask nothing.
MIN_CONTRAST = 16


def otsu_threshold(values: np.ndarray) -> int:
    """The uint8 threshold ``t`` maximising the between-class variance of
    ``values <= t`` against ``values > t`` (Otsu, 1979); the lowest such ``t``
    on ties. A constant input has no split: its value is returned."""
    histogram = np.bincount(np.asarray(values, np.uint8).ravel(), minlength=256).astype(np.float64)
    total = histogram.sum()
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(histogram)  # pixels <= t
    sum_low = np.cumsum(histogram * levels)
    weight_high = total - weight_low
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between[(weight_low == 0) | (weight_high == 0)] = -1.0  # not a split
    if between.max() < 0:
        return int(np.flatnonzero(histogram)[0]) if total else 0
    return int(np.argmax(between))


def tissue_score(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8, high on tissue: for colour images the larger of chroma
    (max - min channel, a saturation that stays small on grey glass) and
    darkness (255 - mean), for grayscale the darkness."""
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]  # alpha says nothing about tissue
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        raise ValueError(
            f"tissue masks take (H, W) or (H, W, 1|3|4) uint8 images, got {pixels.shape} {pixels.dtype}"
        )
    if pixels.ndim == 2:
        return 255 - pixels
    wide = pixels.astype(np.int16)
    chroma = wide.max(axis=-1) - wide.min(axis=-1)
    darkness = 255 - (wide.sum(axis=-1) + 1) // 3
    return np.maximum(chroma, darkness).astype(np.uint8)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1) square: any pixel of the neighbourhood set."""
    height, width = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + height, dx : dx + width]
    return out


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2r+1) square; outside the image counts as set, so
    tissue touching the border is not eaten away."""
    return ~_dilate(~mask, radius)


def tissue_mask(
    image: np.ndarray,
    cleanup_radius: int = 1,
    min_tissue_fraction: float = MIN_TISSUE_FRACTION,
    min_contrast: float = MIN_CONTRAST,
) -> np.ndarray:
    """(H, W) bool, True on tissue, of a coarse view ``image`` (uint8 gray or RGB(A)).

    Otsu's threshold on ``tissue_score``, then an opening (drops specks of
    dust and noise narrower than ``2 * cleanup_radius + 1`` pixels) and a
    closing (fills holes as small). When the two classes' mean scores differ
    by less than ``min_contrast`` (one population, e.g. only glass), or under
    ``min_tissue_fraction`` of the pixels remain tissue, everything is
    tissue: no mask is better than a mask that hides the image.
    """
    score = tissue_score(image)
    mask = score > otsu_threshold(score)
    if not mask.any() or mask.all() or score[mask].mean() - score[~mask].mean() < min_contrast:
        return np.ones(score.shape, bool)
    if cleanup_radius > 0:
        opened = _dilate(_erode(mask, cleanup_radius), cleanup_radius)
        mask = _erode(_dilate(opened, cleanup_radius), cleanup_radius)
    if mask.mean() < min_tissue_fraction:
        return np.ones(score.shape, bool)
    return mask


def cell_mask(
    mask: np.ndarray,
    attention_shape: Sequence[int],
    receptive_field: int | Sequence[int] = 0,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """``attention_shape`` bool: a cell is tissue when more than ``min_fraction``
    of the view pixels it covers are (by default any: a cell with a little
    tissue keeps its attention).

    Cell ``i`` covers view pixels ``[rf/2 + i*step, rf/2 + (i+1)*step)`` with
    ``step = (size - rf) / cells``, the area ``model_ops.geometry`` centres
    its patches in; a cell covers at least one pixel.
    """
    mask = np.asarray(mask, bool)
    fields = np.broadcast_to(np.asarray(receptive_field, np.float64), (2,))
    bounds = []
    for size, cells, field in zip(mask.shape, attention_shape, fields, strict=True):
        step = (size - field) / cells
        starts = np.floor(field / 2 + np.arange(cells) * step).astype(np.int64)
        ends = np.maximum(np.ceil(field / 2 + np.arange(1, cells + 1) * step).astype(np.int64), starts + 1)
        bounds.append((np.clip(starts, 0, size - 1), np.clip(ends, 1, size)))
    # every cell's tissue count from one summed-area table (a 100k slide's map has millions of cells)
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    (top, bottom), (left, right) = (bounds[0][0][:, None], bounds[0][1][:, None]), bounds[1]
    tissue = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    return tissue / ((bottom - top) * (right - left)) > min_fraction


def masked_attention(attention: tf.Tensor, mask: tf.Tensor | np.ndarray) -> tf.Tensor:
    """``attention`` ``(B, ...)`` with background cells zeroed and each map renormalised to sum to 1.

    ``mask`` (True on tissue) has the map's shape without the batch axis, or
    with it. A map whose whole attention lies on background (every tissue
    cell exactly 0) becomes uniform over its tissue cells; a map with no
    tissue cell at all is returned unchanged. Differentiable in ``attention``.
    """
    attention = tf.convert_to_tensor(attention)
    keep = tf.cast(tf.broadcast_to(tf.cast(mask, tf.bool), tf.shape(attention)), attention.dtype)
    axes = tf.range(1, tf.rank(attention))
    kept = attention * keep
    total = tf.reduce_sum(kept, axis=axes, keepdims=True)
    tissue = tf.reduce_sum(keep, axis=axes, keepdims=True)
    # divisors made 1 where unused, so no branch divides by zero (NaN gradients through tf.where)
    normalised = kept / tf.where(total > 0, total, tf.ones_like(total))
    uniform = keep / tf.where(tissue > 0, tissue, tf.ones_like(tissue))
    return tf.where(total > 0, normalised, tf.where(tissue > 0, uniform, attention))
