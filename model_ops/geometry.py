"""From attention cells to full-resolution patch offsets.

The attention map covers the low-resolution view minus the attention
network's receptive field; each cell stands for the centre of its share of
that area. Per spatial dimension, with ``scale = high / low``, ``rf`` the
receptive field (low-res pixels), ``S`` the map size and ``P`` the patch size:

    steps = (low - rf) * scale / S
    start = round(rf/2 * scale + cell * steps + steps/2 - P/2)

so the patch is centred on the cell's centre in full-resolution pixels; a
start may be negative or run past the image (the patch op fills outside
pixels). Example: low 100, high 1000, S 25, P 50: cell 12 -> 475, cell 0 -> -5.
Computed in float64 so gigapixel coordinates round exactly; ``round`` is
half-to-even (``tf.round``).

Two levels (:mod:`model_ops.two_level`) apply the same rule twice, every
result in level-0 (full-resolution) pixels: a coarse cell of the map over the
coarse view of the whole image is the centre of a *region* box of
``region_size`` pixels (:func:`region_offsets`, the rule above with ``P`` the
region size); the region's mid-resolution view is its own "low view" and a
fine cell of the map over that view is the centre of a patch inside the
region (:func:`patch_offsets`: the rule above with ``low`` the region view and
``high`` the region size, plus the region's offset). Both offsets are
integers, so their sum is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import tensorflow as tf

Sizes: TypeAlias = int | Sequence[int] | tf.Tensor


def _per_dim(value: Sizes, ndim: int) -> tf.Tensor:
    """A scalar or per-dimension size as a float64 vector of length ``ndim``."""
    value = tf.cast(value, tf.float64)
    return tf.broadcast_to(value, [ndim]) if value.shape.rank == 0 else value


def cells_to_offsets(
    cells: tf.Tensor,
    low_shape: Sizes,
    high_shape: Sizes,
    attention_shape: Sizes,
    patch_size: Sizes,
    receptive_field: Sizes = 0,
) -> tf.Tensor:
    """Top-left full-resolution offsets ``(..., n)`` int32 of the patches at ``cells`` ``(..., n)``.

    ``low_shape``, ``high_shape`` and ``attention_shape`` are the spatial
    sizes (no batch, no channels) of the low view, the full image and the
    map; ``patch_size`` and ``receptive_field`` are per dimension or scalars.
    """
    cells = tf.convert_to_tensor(cells)
    ndim = cells.shape[-1]
    steps, origin = cell_grid(low_shape, high_shape, attention_shape, receptive_field, ndim)
    start = origin + tf.cast(cells, tf.float64) * steps + steps / 2 - _per_dim(patch_size, ndim) / 2
    return tf.cast(tf.round(start), tf.int32)


def cell_grid(
    low_shape: Sizes,
    high_shape: Sizes,
    attention_shape: Sizes,
    receptive_field: Sizes = 0,
    ndim: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Full-resolution ``(steps, origin)`` float64 per dimension: cell ``i`` covers
    ``[origin + i*steps, origin + (i+1)*steps)``. Clients draw the map with it."""
    if not ndim:
        if isinstance(low_shape, int):
            raise TypeError("cell_grid needs ndim when low_shape is a scalar")
        ndim = len(low_shape)
    low = _per_dim(low_shape, ndim)
    scale = _per_dim(high_shape, ndim) / low
    rf = _per_dim(receptive_field, ndim)
    return (low - rf) * scale / _per_dim(attention_shape, ndim), rf / 2 * scale


def region_offsets(
    cells: tf.Tensor,
    coarse_view_shape: Sizes,
    image_shape: Sizes,
    coarse_map_shape: Sizes,
    region_size: Sizes,
    receptive_field: Sizes = 0,
) -> tf.Tensor:
    """Top-left level-0 offsets ``(..., n)`` int32 of the regions centred on coarse ``cells``.

    The coarse map is over the coarse view of the whole image, so this is
    :func:`cells_to_offsets` with the region as the patch.
    """
    return cells_to_offsets(
        cells, coarse_view_shape, image_shape, coarse_map_shape, region_size, receptive_field
    )


def patch_offsets(
    regions: tf.Tensor,
    cells: tf.Tensor,
    fine_view_shape: Sizes,
    region_size: Sizes,
    fine_map_shape: Sizes,
    patch_size: Sizes,
    receptive_field: Sizes = 0,
) -> tf.Tensor:
    """Level-0 offsets ``(B, K, N, n)`` of the patches at fine ``cells`` ``(B, K, N, n)``.

    ``regions`` ``(B, K, n)`` are the regions' level-0 offsets
    (:func:`region_offsets`); each fine map covers its region's view of
    ``fine_view_shape`` pixels, which stands for ``region_size`` level-0 pixels.
    """
    inside = cells_to_offsets(
        cells, fine_view_shape, region_size, fine_map_shape, patch_size, receptive_field
    )
    return inside + tf.cast(regions, tf.int32)[:, :, None]
