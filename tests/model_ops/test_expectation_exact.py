"""Exact unbiasedness of the estimators, by enumerating every ordered sample.

For a map of K cells and N draws, every ordered sample is put in the batch
dimension at once, weighted by its exact probability (computed here in NumPy,
independently of the library). The expectation of the forward must equal
``Φ = Σ a_i f_i`` and the expectation of the gradient with respect to the
logits must equal the true gradient ``a_j (v_j - Σ a_i v_i)``, ``v = f g``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf

from model_ops.expectation import aggregate

KN = [(k, n) for k in range(1, 7) for n in range(1, k + 1)]


def all_samples(a: np.ndarray, n: int, replace: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered sample of ``n`` cells and its probability."""
    k = len(a)
    if replace:
        seqs = np.array(list(itertools.product(range(k), repeat=n)))
        return seqs, np.prod(a[seqs], axis=1)
    seqs = np.array(list(itertools.permutations(range(k), n)))
    prob, left = np.ones(len(seqs)), np.ones((len(seqs), k), dtype=bool)
    for step in seqs.T:  # each draw from the mass still left, summed without cancellation
        prob *= a[step] / np.where(left, a, 0).sum(axis=1)
        left[np.arange(len(seqs)), step] = False
    return seqs, prob


def expectations(estimator, logits, f, g, n, replace):
    """Exact E[forward], E[d/dlogits], E[d/dfeatures] of ``<g, estimator>``."""
    a = tf.nn.softmax(logits).numpy()
    seqs, prob = all_samples(a, n, replace)
    assert prob.sum() == pytest.approx(1, abs=1e-12)
    theta, feats = tf.Variable(logits), tf.Variable(f)
    with tf.GradientTape() as tape:
        probs = tf.gather(tf.nn.softmax(theta), seqs)
        value = estimator(tf.gather(feats, seqs), probs, replace)
        weighted = tf.reshape(value, [len(seqs), -1]) * prob[:, None]
        objective = tf.reduce_sum(weighted * np.reshape(g, [1, -1]))
    d_logits, d_feats = tape.gradient(objective, [theta, feats])
    mean = tf.reduce_sum(weighted, axis=0).numpy().reshape(np.shape(g))
    return mean, d_logits.numpy(), tf.convert_to_tensor(d_feats).numpy()


def truth(logits, f, g):
    """``Φ`` and its exact gradients with respect to the logits and the features."""
    a = tf.nn.softmax(logits).numpy()
    flat_f = f.reshape(len(a), -1)
    v = flat_f @ g.ravel()
    phi = (a @ flat_f).reshape(g.shape)
    return phi, a * (v - a @ v), a.reshape([-1] + [1] * g.ndim) * g


def problem(k, seed, shape=(3,), offset=0.0, peaky=False):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=k) * (3.0 if peaky else 1.0)
    f = rng.normal(size=(k, *shape)) + offset
    g = rng.normal(size=shape)
    return logits, f, g


def max_errors(estimator, logits, f, g, n, replace):
    got = expectations(estimator, logits, f, g, n, replace)
    want = truth(logits, f, g)
    return [float(np.max(np.abs(x - y))) for x, y in zip(got, want, strict=True)]


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("k,n", KN)
def test_forward_and_gradients_are_exactly_unbiased(k, n, replace):
    for seed, kwargs in enumerate([{}, {"offset": 4.0}, {"peaky": True, "shape": (2, 2)}]):
        errors = max_errors(aggregate, *problem(k, 100 * k + 10 * n + seed, **kwargs), n, replace)
        assert max(errors) < 1e-12, (seed, errors)


def autodiff_only(features, probs, replace):
    """The without-replacement forward differentiated as written: biased."""
    pm = 1 - tf.cumsum(probs, axis=1, exclusive=True)
    terms = tf.cumsum(probs[..., None] * features, axis=1, exclusive=True) + pm[..., None] * features
    return tf.reduce_mean(terms, axis=1)


@pytest.mark.parametrize("k,n", [(4, 2), (5, 3), (6, 5)])
def test_enumeration_detects_a_biased_gradient(k, n):
    """The harness has power: a forward-only derivative fails it by far."""
    forward, d_logits, d_feats = max_errors(autodiff_only, *problem(k, 7), n, False)
    assert forward < 1e-12 and d_feats < 1e-12
    assert d_logits > 1e-2


def test_zero_attention_cells_give_finite_gradients():
    """Cells of zero mass (drawn only once the mass is exhausted) break nothing."""
    features = tf.constant(np.random.default_rng(0).normal(size=(1, 3, 2)))
    probs = tf.Variable([[0.7, 0.3, 0.0]], dtype=tf.float64)
    for replace in (True, False):
        with tf.GradientTape() as tape:
            value = aggregate(features, probs, replace)
        assert np.all(np.isfinite(tape.gradient(value, probs).numpy()))
