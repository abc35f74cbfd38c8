"""Drawing patch positions from an attention map.

Three ways to pick ``N`` cells of a map ``a`` (one distribution per image):

- ``replace=True``: ``N`` independent categorical draws;
- ``replace=False``: Gumbel top-k, i.e. the ``N`` largest ``log(a) + Gumbel``
  keys, returned by decreasing key, which is exactly the order in which a
  sequential draw without replacement would have picked them (the
  without-replacement estimator in :mod:`model_ops.expectation` relies on it);
- ``mode="top_k"``: the ``N`` most attended cells, deterministically (ties go
  to the lower row-major index).

Randomness is stateless and per image: image ``b`` draws with the key
``(seed_b, 0)``, so a given seed gives the same cells in eager mode, inside
``tf.function`` and from a reloaded SavedModel, whatever the batch it sits in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

import numpy as np
import tensorflow as tf

Mode = Literal["sample", "top_k"]
MODES: tuple[Mode, ...] = ("sample", "top_k")
SeedLike: TypeAlias = int | tf.Tensor | None


def row_keys(seed: SeedLike, batch_size: tf.Tensor) -> tf.Tensor:
    """Stateless RNG keys ``(B, 2)`` int64, one per image.

    ``seed`` is ``None`` (fresh random keys on every call), a scalar (every
    image gets the same key, so identical maps give identical draws) or a
    ``(B,)`` vector of per-image seeds.
    """
    if seed is None:
        return tf.random.uniform([batch_size, 2], maxval=tf.int64.max, dtype=tf.int64)
    seed = tf.cast(seed, tf.int64)
    seed = tf.broadcast_to(tf.reshape(seed, [-1]), [batch_size])
    return tf.stack([seed, tf.zeros_like(seed)], axis=1)


def _per_row(
    draw: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], logits: tf.Tensor, keys: tf.Tensor
) -> tf.Tensor:
    """``draw(row, key)`` for every row, stacked.

    A lone image (what a server mostly sees) skips the loop: a ``map_fn``
    costs about 0.1-0.3 ms of loop machinery per call on two CPU cores, as
    much as the draw itself. Both branches draw with the same key, so the
    cells do not depend on which one runs.
    """

    def loop() -> tf.Tensor:
        return tf.map_fn(
            lambda args: draw(*args), (logits, keys), fn_output_signature=tf.TensorSpec([None], tf.int32)
        )

    return tf.cond(tf.shape(logits)[0] == 1, lambda: draw(logits[0], keys[0])[None], loop)


# The per-row draws are tf.functions so that eager callers get a graph loop
# rather than one Python iteration per image.
@tf.function(reduce_retracing=True)
def _categorical(logits: tf.Tensor, n: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
    """``n`` independent draws per row, as int32 flat indices ``(B, n)``."""

    def draw(row: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        return tf.random.stateless_categorical(row[None], n, seed=key, dtype=tf.int32)[0]

    return _per_row(draw, logits, keys)


@tf.function(reduce_retracing=True)
def _gumbel_top_k(logits: tf.Tensor, n: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
    """``n`` draws without replacement per row, in sequential draw order."""
    tiny = float(np.finfo(logits.dtype.as_numpy_dtype).tiny)

    def draw(row: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        u = tf.random.stateless_uniform(tf.shape(row), seed=key, minval=tiny, maxval=1.0, dtype=row.dtype)
        return tf.math.top_k(row - tf.math.log(-tf.math.log(u)), k=n, sorted=True).indices

    return _per_row(draw, logits, keys)


def _check_count(n: tf.Tensor, cells: tf.Tensor, replace: bool, mode: str) -> list:
    """Assertions that ``n`` cells can be drawn from a map of ``cells`` cells."""
    checks = [tf.debugging.assert_positive(n, message="n_patches must be positive")]
    if not replace or mode == "top_k":
        checks.append(
            tf.debugging.assert_less_equal(
                n,
                cells,
                message="n_patches exceeds the number of attention cells "
                "(only sampling with replacement can draw more)",
            )
        )
    return checks


def sample_positions(
    attention_map: tf.Tensor,
    n_patches: int | tf.Tensor,
    replace: bool,
    mode: Mode = "sample",
    seed: SeedLike = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pick ``n_patches`` cells of ``attention_map`` ``(B, S1..Sn)``.

    Returns ``cells`` ``(B, N, n)`` int32 (row-major coordinates) and
    ``probs`` ``(B, N)``, the attention of each picked cell, gathered from the
    map so that gradients flow back to it (the indices themselves carry no
    gradient). ``probs`` keeps the map's dtype (float32 in models).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    attention_map = tf.convert_to_tensor(attention_map)
    shape = tf.shape(attention_map)
    batch, grid = shape[0], shape[1:]
    flat = tf.reshape(attention_map, [batch, -1])
    n_patches = tf.convert_to_tensor(n_patches, tf.int32)
    with tf.control_dependencies(_check_count(n_patches, tf.shape(flat)[1], replace, mode)):
        logits = tf.math.log(tf.stop_gradient(flat))
    if mode == "top_k":
        indices = tf.math.top_k(logits, k=n_patches, sorted=True).indices
    elif replace:
        indices = _categorical(logits, n_patches, row_keys(seed, batch))
    else:
        indices = _gumbel_top_k(logits, n_patches, row_keys(seed, batch))
    indices = tf.ensure_shape(indices, [None, tf.get_static_value(n_patches)])
    probs = tf.gather(flat, indices, batch_dims=1)
    coords = tf.unravel_index(tf.reshape(indices, [-1]), tf.cast(grid, tf.int32))
    ndim = attention_map.shape.rank - 1
    cells = tf.reshape(tf.transpose(coords), [batch, -1, ndim])
    return tf.ensure_shape(cells, indices.shape.concatenate([ndim])), probs
