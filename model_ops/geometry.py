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
