"""Exact unbiasedness of the two-level estimator, by enumerating every outcome.

An outcome is an ordered sample of ``K`` regions from the coarse map ``a``
and, for each of the ``K`` slots, an ordered sample of ``N`` patches from the
fine map ``b(. | r_k)`` of the region in that slot, drawn independently of
the other slots. Every outcome is put in the batch at once with its exact
probability (computed here in NumPy). The expectation of the estimate must
equal ``Φ = Σ_r a(r) Σ_p b(p | r) f(p)``, and the expectation of its
gradients with respect to the coarse logits, the fine logits and the
features must equal the gradients of ``Φ`` (plain autodiff of the closed
form), to float64 precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model_ops.two_level import aggregate_two_level
from tests.model_ops.test_expectation_exact import all_samples

FLAGS = [(True, True), (True, False), (False, True), (False, False)]
# (coarse cells, K regions, fine cells per region, N patches per region)
SIZES = [(3, 2, 4, 2), (3, 2, 3, 2), (4, 3, 3, 2), (2, 1, 3, 3)]


def problem(cells: int, fine: int, seed: int, dim: int = 2, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=cells),
        rng.normal(size=(cells, fine)) * 1.5,
        rng.normal(size=(cells, fine, dim)) + offset,
        rng.normal(size=dim),
    )


def outcomes(a, b, k, n, replace_regions, replace_patches):
    """Every outcome: regions ``(O, K)``, patches ``(O, K, N)`` and probabilities ``(O,)``."""
    region_seqs, region_prob = all_samples(a, k, replace_regions)
    patch_seqs = all_samples(b[0], n, replace_patches)[0]
    patch_prob = np.stack([all_samples(row, n, replace_patches)[1] for row in b])  # (cells, S_f)
    index = np.indices((len(region_seqs),) + (len(patch_seqs),) * k).reshape(k + 1, -1).T
    regions = region_seqs[index[:, 0]]
    prob = region_prob[index[:, 0]]
    for slot in range(k):
        prob = prob * patch_prob[regions[:, slot], index[:, slot + 1]]
    return regions, patch_seqs[index[:, 1:]], prob


def expectations(coarse, fine, f, g, k, n, replace_regions, replace_patches, estimator=aggregate_two_level):
    """Exact E[estimate] and E[gradients of <g, estimate>] over every outcome."""
    a = tf.nn.softmax(coarse).numpy()
    b = tf.nn.softmax(fine, axis=1).numpy()
    regions, patches, prob = outcomes(a, b, k, n, replace_regions, replace_patches)
    assert prob.sum() == pytest.approx(1, abs=1e-12)
    where = np.stack([np.broadcast_to(regions[:, :, None], patches.shape), patches], axis=-1)
    variables = [tf.Variable(coarse), tf.Variable(fine), tf.Variable(f)]
    with tf.GradientTape() as tape:
        theta, phi, feats = variables
        region_probs = tf.gather(tf.nn.softmax(theta), regions)
        patch_probs = tf.gather_nd(tf.nn.softmax(phi, axis=1), where)
        value = estimator(
            tf.gather_nd(feats, where), region_probs, patch_probs, replace_regions, replace_patches
        )
        weighted = value * prob[:, None]
        objective = tf.reduce_sum(weighted * g)
    grads = tape.gradient(objective, variables)
    return [tf.reduce_sum(weighted, axis=0).numpy()] + [tf.convert_to_tensor(d).numpy() for d in grads]


def truth(coarse, fine, f, g):
    """``Φ`` and the gradients of ``<g, Φ>``, from the closed form."""
    variables = [tf.Variable(coarse), tf.Variable(fine), tf.Variable(f)]
    with tf.GradientTape() as tape:
        theta, phi, feats = variables
        inner = tf.einsum("rp,rpd->rd", tf.nn.softmax(phi, axis=1), feats)
        phi_value = tf.einsum("r,rd->d", tf.nn.softmax(theta), inner)
        objective = tf.reduce_sum(phi_value * g)
    return [phi_value.numpy()] + [
        tf.convert_to_tensor(d).numpy() for d in tape.gradient(objective, variables)
    ]


def max_errors(cells, k, fine, n, flags, seed, estimator=aggregate_two_level, **kwargs):
    coarse_logits, fine_logits, f, g = problem(cells, fine, seed, **kwargs)
    got = expectations(coarse_logits, fine_logits, f, g, k, n, *flags, estimator=estimator)
    want = truth(coarse_logits, fine_logits, f, g)
    return [float(np.max(np.abs(x - y))) for x, y in zip(got, want, strict=True)]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: f"regions_{'with' if f[0] else 'without'}")
@pytest.mark.parametrize("cells,k,fine,n", SIZES)
def test_value_and_all_gradients_are_exactly_unbiased(cells, k, fine, n, flags):
    """Value, d/d coarse logits, d/d fine logits, d/d features: all exact."""
    for seed, kwargs in enumerate([{}, {"offset": 3.0, "dim": 3}]):
        errors = max_errors(cells, k, fine, n, flags, 1000 * cells + 10 * k + seed, **kwargs)
        assert max(errors) < 1e-12, (seed, errors)


def test_the_gradients_are_not_trivially_zero():
    """The quantities compared above are large enough to carry the test."""
    coarse_logits, fine_logits, f, g = problem(3, 4, 0)
    for grad in truth(coarse_logits, fine_logits, f, g)[1:]:
        assert np.max(np.abs(grad)) > 1e-2


@pytest.mark.parametrize("flags", FLAGS)
def test_enumeration_detects_a_mismatched_estimator(flags):
    """The harness has power: estimating either level with the other level's rule fails it."""
    for wrong in ((not flags[0], flags[1]), (flags[0], not flags[1])):

        def mismatched(features, region_probs, patch_probs, *_):
            return aggregate_two_level(features, region_probs, patch_probs, *wrong)  # noqa: B023

        errors = max_errors(3, 2, 4, 2, flags, 5, estimator=mismatched)
        assert max(errors) > 1e-3, (wrong, errors)
