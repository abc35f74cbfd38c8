"""Two-level attention sampling: regions from a coarse map, patches from each region's fine map.

A coarse attention ``a(r)`` over the coarse view of the whole image picks
``K`` regions; a fine attention ``b(p | r)`` over each chosen region's view
picks ``N`` patches in it; a feature network turns each full-resolution patch
into ``f(p)``. The target is the two-level expectation

    ``Φ = Σ_r a(r) Σ_p b(p | r) f(p)``.

The estimator composes the one-level estimators of
:mod:`model_ops.expectation`: per chosen region, ``aggregate`` of its ``N``
features with their fine attention gives ``G_k``, unbiased for the region's
``μ(r_k) = Σ_p b(p | r_k) f(p)`` given the region; ``aggregate`` of the ``K``
values ``G_k`` with their coarse attention is then unbiased for ``Φ``. Exact
for values and gradients, with or without replacement at either level,
because every quantity the outer estimator computes from ``G`` (its value and
its custom gradient to the coarse attention) is linear in ``G`` with weights
that depend on the regions only, and the gradient it passes down to ``G_k``
is such a weight times the upstream gradient, which the inner estimator
turns into an unbiased gradient for ``b`` and ``f``. Each chosen slot draws
its patches with its own seed, so a region drawn twice (with replacement)
gets two independent draws, as the estimator needs.
``tests/model_ops/test_two_level_exact.py`` proves it by enumeration.

Geometry (boxes in level-0 pixels) is in :mod:`model_ops.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from model_ops.expectation import aggregate
from model_ops.lowres import low_resolution_view
from model_ops.patch_ops import extract_patches
from model_ops.sampling import Mode, SeedLike, sample_positions


def _mix(x: tf.Tensor) -> tf.Tensor:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic): nearby inputs, unrelated outputs."""
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(shift, tf.uint64)))
        x = x * tf.constant(multiplier, tf.uint64)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, tf.uint64)))


def region_seeds(seed: SeedLike, batch_size: tf.Tensor, n_regions: int | tf.Tensor) -> tf.Tensor | None:
    """Seeds ``(B * K,)`` int64 for the patch draws of each chosen region.

    Slot ``k`` of an image with seed ``s`` (read as
    :func:`model_ops.sampling.row_keys` reads it) gets ``splitmix64(s + (k +
    1) * golden)``: a region's draw depends on neither the batch nor the
    other slots, and is unrelated to the stream the regions were drawn with.
    ``None`` stays ``None`` (fresh draws).
    """
    if seed is None:
        return None
    seed = tf.broadcast_to(tf.reshape(tf.cast(seed, tf.int64), [-1]), [batch_size])
    slots = tf.cast(tf.range(1, tf.cast(n_regions, tf.int32) + 1), tf.uint64) * tf.constant(
        0x9E3779B97F4A7C15, tf.uint64
    )
    mixed = _mix(tf.bitcast(seed, tf.uint64)[:, None] + slots[None])
    return tf.reshape(tf.bitcast(mixed, tf.int64), [-1])


def sample_patches_in_regions(
    fine_maps: tf.Tensor,
    n_patches: int | tf.Tensor,
    replace: bool,
    mode: Mode = "sample",
    seed: SeedLike = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pick ``n_patches`` cells of each region's map ``fine_maps`` ``(B, K, S1..Sn)``.

    Each map sums to 1. ``seed`` is the images' seed (scalar or ``(B,)``), the
    one their regions were drawn with: :func:`region_seeds` derives one per
    region from it. Returns ``cells`` ``(B, K, N, n)`` int32 and ``probs``
    ``(B, K, N)`` (gathered from the maps, so gradients reach them).
    """
    fine_maps = tf.convert_to_tensor(fine_maps)
    shape = tf.shape(fine_maps)
    batch, regions = shape[0], shape[1]
    flat = tf.reshape(fine_maps, tf.concat([[-1], shape[2:]], 0))
    seeds = region_seeds(seed, batch, regions) if mode == "sample" else None
    cells, probs = sample_positions(flat, n_patches, replace, mode, seeds)
    ndim = fine_maps.shape.rank - 2
    cells = tf.reshape(cells, [batch, regions, -1, ndim])
    return cells, tf.reshape(probs, [batch, regions, -1])


def aggregate_two_level(
    features: tf.Tensor,
    region_probs: tf.Tensor,
    patch_probs: tf.Tensor,
    replace_regions: bool,
    replace_patches: bool,
) -> tf.Tensor:
    """Estimate ``Φ`` from ``features`` ``(B, K, N, ...)`` of the patches drawn in ``K`` regions.

    ``region_probs`` ``(B, K)`` is the coarse attention of each chosen region,
    ``patch_probs`` ``(B, K, N)`` the fine attention of each patch within its
    region; the two flags must match how each level was drawn. Returns
    ``(B, ...)``; gradients reach the features and both attentions.
    """
    features = tf.convert_to_tensor(features)
    shape = tf.shape(features)
    per_region = tf.reshape(features, tf.concat([[-1], shape[2:]], 0))
    inner = aggregate(per_region, tf.reshape(patch_probs, [-1, shape[2]]), replace_patches)
    inner = tf.reshape(inner, tf.concat([shape[:2], shape[3:]], 0))
    return aggregate(inner, region_probs, replace_regions)


def region_views(
    images: tf.Tensor, offsets: tf.Tensor, region_size: Sequence[int], view_size: Sequence[int] | tf.Tensor
) -> tf.Tensor:
    """The views ``(B, K, vh, vw, C)`` of the regions at level-0 ``offsets`` ``(B, K, 2)`` of ``images``.

    A region is cut at full resolution (zeros outside the image) and
    area-resampled to ``view_size``: for uint8 images exactly as
    :func:`model_ops.lowres.low_resolution_view` makes every view, so a
    server that reads a region from a pyramid level reproduces it.
    """
    cut = extract_patches(images, offsets, region_size)
    shape = tf.shape(cut)
    flat = tf.reshape(cut, tf.concat([[-1], shape[2:]], 0))
    if flat.dtype == tf.uint8:
        views = low_resolution_view(flat, view_size)
    else:
        views = tf.cast(tf.image.resize(flat, view_size, method="area"), flat.dtype)
    return tf.reshape(views, tf.concat([shape[:2], tf.shape(views)[1:]], 0))
