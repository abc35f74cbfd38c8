"""Unbiased estimators of ``Φ = Σ_i a_i f_i`` from ``N`` sampled patches.

Both estimators take the features ``f_k`` of the sampled patches ``(B, N, ...)``
and the attention ``p_k = a_{i_k}`` of their cells ``(B, N)`` (gathered from
the map, so gradients reach the attention network through them). Their
forward value and their gradients are exactly unbiased: the expected forward
is ``Φ`` and the expected gradient, taken with respect to anything that keeps
the map on the simplex (e.g. the logits of a softmax), is the gradient of
``Φ``. The gradients are written by hand (``tf.custom_gradient``, which
survives SavedModel export) because the forward alone would not carry the
dependence of the *draw* on the attention.

With replacement (draws are i.i.d. from ``a``):
    ``F = (1/N) Σ_k f_k``; to ``f_k``: ``g/N``; to ``p_k``:
    ``(u_k - b_k) / (N p_k)`` with ``u_k = <g, f_k>`` and the leave-one-out
    baseline ``b_k = mean_{j≠k} u_j`` (independent of draw ``k``, so it keeps
    the score-function term unbiased while removing any common offset of the
    ``u``; ``b = 0`` when ``N = 1``).

Without replacement (``i_k`` drawn from what is left after ``i_1..i_{k-1}``),
with ``pm_k = 1 - Σ_{j<k} p_j`` the mass still available at draw ``k``:
    ``F_k = Σ_{j<k} p_j f_j + pm_k f_k`` has ``E[F_k | i_1..i_{k-1}] = Φ``;
    ``F = (1/N) Σ_k F_k``.
    Gradient: ``(1/N) Σ_k [∇F_k + (F_k - F_{k-1}) ∇log q_k]`` where
    ``q_k = p_k / pm_k`` is the conditional probability of draw ``k`` and
    ``F_0 = 0``. The score of the whole sequence is not needed: because
    ``F_k`` has the same conditional mean ``Φ`` given any prefix, the scores of
    the earlier draws average out, and ``F_{k-1}`` (a function of the prefix
    only) is a valid baseline for draw ``k``. (The original library's
    hand-written gradient is biased, by a factor of 2-3 on small maps.)
    ``tests/model_ops/test_expectation_exact.py`` proves both estimators by enumerating
    every ordered sample.
"""

from __future__ import annotations

import tensorflow as tf


def _flat(x: tf.Tensor, keep: int) -> tf.Tensor:
    """``x`` with its dimensions after the first ``keep`` merged into one."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([shape[:keep], [-1]], axis=0))


def _scores(upstream: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    """``u_k = <g, f_k>`` per sample ``(B, N)``."""
    return tf.reduce_sum(_flat(features, 2) * _flat(upstream, 1)[:, None], axis=-1)


def _feature_gradient(weights: tf.Tensor, upstream: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    """``w_k * g`` for each sample, shaped like ``features``."""
    return tf.reshape(weights[..., None] * _flat(upstream, 1)[:, None], tf.shape(features))


@tf.custom_gradient
def _with_replacement(features: tf.Tensor, probs: tf.Tensor):
    n = tf.cast(tf.shape(features)[1], features.dtype)
    value = tf.reduce_mean(features, axis=1)

    def grad(upstream):
        u = _scores(upstream, features)
        others = tf.maximum(n - 1, 1)
        baseline = (tf.reduce_sum(u, axis=1, keepdims=True) - u) / others
        d_probs = tf.math.divide_no_nan(u - baseline, n * probs)
        d_features = _feature_gradient(tf.fill(tf.shape(probs), 1 / n), upstream, features)
        return d_features, d_probs

    return value, grad


def _without_replacement_weights(probs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-sample weights of ``F = Σ_j c_j f_j`` and the available mass ``pm``."""
    n = tf.shape(probs)[1]
    pm = tf.nn.relu(1 - tf.cumsum(probs, axis=1, exclusive=True))
    later = tf.cast(n - 1 - tf.range(n), probs.dtype)
    return (pm + probs * later) / tf.cast(n, probs.dtype), pm


@tf.custom_gradient
def _without_replacement(features: tf.Tensor, probs: tf.Tensor):
    weights, pm = _without_replacement_weights(probs)
    value = tf.reduce_sum(_flat(features, 2) * weights[..., None], axis=1)
    value = tf.reshape(value, tf.concat([tf.shape(features)[:1], tf.shape(features)[2:]], 0))

    def grad(upstream):
        n = tf.shape(probs)[1]
        u = _scores(upstream, features)
        later = tf.cast(n - 1 - tf.range(n), u.dtype)
        # direct: Σ_{k>m} (u_m - u_k); baseline-corrected scores of the later
        # draws' pm_k telescope to u_{N-1} - u_m; own score: pm_m (u_m - u_{m-1}) / p_m.
        after = tf.cumsum(u, axis=1, exclusive=True, reverse=True)
        last = u[:, -1:]
        previous = tf.pad(u[:, :-1], [[0, 0], [1, 0]])
        own = tf.math.divide_no_nan(pm * (u - previous), probs)
        d_probs = (later * u - after + last - u + own) / tf.cast(n, u.dtype)
        return _feature_gradient(weights, upstream, features), d_probs

    return value, grad


def aggregate(features: tf.Tensor, probs: tf.Tensor, replace: bool) -> tf.Tensor:
    """Estimate ``Φ`` from sampled ``features`` ``(B, N, ...)`` and their ``probs`` ``(B, N)``.

    ``replace`` must match how the cells were drawn. The value is what
    inference uses; under a gradient tape the attention gradient flows back
    through ``probs``. Returns ``(B, ...)``.
    """
    features = tf.convert_to_tensor(features)
    probs = tf.cast(probs, features.dtype)
    estimator = _with_replacement if replace else _without_replacement
    return estimator(features, probs)
