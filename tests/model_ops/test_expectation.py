"""Estimator details beyond unbiasedness: baselines, dtypes, shapes."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from model_ops.expectation import aggregate


def gradients(features, probs, replace, upstream=None):
    features, probs = tf.constant(features), tf.constant(probs)
    with tf.GradientTape() as tape:
        tape.watch([features, probs])
        value = aggregate(features, probs, replace)
        g = tf.ones_like(value) if upstream is None else tf.constant(upstream, value.dtype)
        total = tf.reduce_sum(value * g)
    return value, *tape.gradient(total, [features, probs])


def test_with_replacement_attention_gradient_ignores_a_common_feature_offset():
    """The leave-one-out baseline: shifting every feature by c changes nothing."""
    rng = np.random.default_rng(0)
    features, probs = rng.normal(size=(3, 5, 4)), rng.uniform(0.01, 0.3, (3, 5))
    upstream = rng.normal(size=(3, 4))
    _, _, plain = gradients(features, probs, True, upstream)
    _, _, shifted = gradients(features + rng.normal(size=4) * 10, probs, True, upstream)
    np.testing.assert_allclose(shifted, plain, rtol=1e-9, atol=1e-9)


def test_single_draw_with_replacement_is_the_score_function():
    features, probs = np.array([[[2.0, -1.0]]]), np.array([[0.25]])
    value, d_features, d_probs = gradients(features, probs, True, [[1.0, 3.0]])
    np.testing.assert_allclose(value, [[2.0, -1.0]])
    np.testing.assert_allclose(d_features, [[[1.0, 3.0]]])
    np.testing.assert_allclose(d_probs, [[(2.0 - 3.0) / 0.25]])


def test_without_replacement_forward_matches_the_written_estimator():
    rng = np.random.default_rng(1)
    f, p = rng.normal(size=(2, 4, 3)), rng.uniform(0.05, 0.2, (2, 4))
    pm = 1 - np.concatenate([np.zeros((2, 1)), np.cumsum(p, 1)[:, :-1]], 1)
    terms = [np.einsum("bj,bjd->bd", p[:, :k], f[:, :k]) + pm[:, k, None] * f[:, k] for k in range(4)]
    np.testing.assert_allclose(aggregate(f, p, False), np.mean(terms, axis=0), rtol=1e-12)


def test_dtypes_and_trailing_shapes():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    probs = rng.uniform(0.1, 0.3, (2, 3))  # float64 probs follow the features' dtype
    for replace in (True, False):
        value, d_features, d_probs = gradients(features, probs, replace)
        assert value.dtype == tf.float32 and value.shape == (2, 4, 5)
        assert d_features.shape == features.shape and d_probs.dtype == tf.float64
