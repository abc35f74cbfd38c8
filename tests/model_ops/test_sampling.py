"""Drawing cells: frequencies match the map, seeds reproduce, top-k is exact.

Frequency tests are chi-square goodness-of-fit tests at significance
``ALPHA``: with the fixed seeds they are deterministic, and a correct sampler
would fail one only with probability ``ALPHA`` over the choice of seed. Each
is paired with a check that the same counts reject a slightly wrong map, so
the test has power.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from model_ops.sampling import sample_positions

ALPHA = 1e-4
ROWS = 20000


def skewed_map(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 3.0, size=shape)
    return (a / a.sum()).astype(np.float32)


def draws(a: np.ndarray, n: int, replace: bool, rows: int = ROWS) -> np.ndarray:
    """``rows`` independent draws of ``n`` flat indices from the same map."""
    batch = np.broadcast_to(a, (rows, *a.shape))
    cells, _ = sample_positions(batch, n, replace, seed=tf.range(rows, dtype=tf.int64) + 1)
    return np.ravel_multi_index(tuple(np.moveaxis(cells.numpy(), -1, 0)), a.shape)


def assert_fits(counts: np.ndarray, expected_p: np.ndarray, wrong_p: np.ndarray) -> None:
    """Counts fit ``expected_p`` at ``ALPHA`` and reject ``wrong_p``."""
    total = counts.sum()
    expected_p = expected_p / expected_p.sum()
    assert np.min(expected_p) * total >= 5, "too few expected counts for chi-square"
    assert stats.chisquare(counts, expected_p * total).pvalue > ALPHA
    assert stats.chisquare(counts, wrong_p / wrong_p.sum() * total).pvalue < ALPHA


def perturbed(p: np.ndarray) -> np.ndarray:
    """``p`` with 10% of the mass of its largest cell moved to its smallest."""
    q = p.astype(np.float64).copy()
    big, small = np.argmax(q), np.argmin(q)
    q[big] -= 0.1 * q[big]
    q[small] += 0.1 * p[big]
    return q


def test_with_replacement_frequencies_match_the_map():
    a = skewed_map((3, 4))
    idx = draws(a, 5, replace=True)
    p = a.ravel().astype(np.float64)
    assert_fits(np.bincount(idx.ravel(), minlength=p.size), p, perturbed(p))


def test_without_replacement_first_draws_match_the_map():
    a = skewed_map((2, 3), seed=1)
    idx = draws(a, 3, replace=False)
    p = a.ravel().astype(np.float64)
    assert_fits(np.bincount(idx[:, 0], minlength=p.size), p, perturbed(p))


def sequence_probability(a: np.ndarray, seq) -> float:
    prob, left = 1.0, 1.0
    for i in seq:
        prob *= a[i] / left
        left -= a[i]
    return prob


@pytest.mark.parametrize("k,n", [(6, 2), (4, 3)])
def test_without_replacement_ordered_sequences_match_sequential_draws(k, n):
    """Ordered pairs / triples occur as often as a sequential draw predicts.

    The order matters: P(i, j) = a_i a_j / (1 - a_i) is not symmetric, and the
    reversed-order hypothesis must be rejected.
    """
    a = skewed_map((k,), seed=k).astype(np.float64)
    idx = draws(a.astype(np.float32), n, replace=False)
    assert np.all([len(set(row)) == n for row in idx[:200]])
    seqs = list(itertools.permutations(range(k), n))
    code = {s: i for i, s in enumerate(seqs)}
    counts = np.bincount([code[tuple(row)] for row in idx], minlength=len(seqs))
    expected = np.array([sequence_probability(a, s) for s in seqs])
    reversed_order = np.array([sequence_probability(a, s[::-1]) for s in seqs])
    assert_fits(counts, expected, reversed_order)


def test_zero_cells_are_never_drawn():
    a = np.array([0.5, 0.0, 0.25, 0.0, 0.25], np.float32)
    assert not np.isin(draws(a, 4, True, rows=500), [1, 3]).any()
    assert not np.isin(draws(a, 3, False, rows=500), [1, 3]).any()


@pytest.mark.parametrize("replace", [True, False])
def test_a_seed_reproduces_the_draw_in_eager_function_and_savedmodel(replace, tmp_path):
    a = tf.constant(np.stack([skewed_map((5, 7), s) for s in range(3)]))

    class Sampler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 5, 7]), tf.TensorSpec([], tf.int64)])
        def __call__(self, attention, seed):
            return sample_positions(attention, 8, replace, seed=seed)

    tf.saved_model.save(Sampler(), str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    eager = sample_positions(a, 8, replace, seed=42)
    for cells, probs in [Sampler()(a, tf.constant(42, tf.int64)), loaded(a, tf.constant(42, tf.int64))]:
        np.testing.assert_array_equal(cells, eager[0])
        np.testing.assert_array_equal(probs, eager[1])
    other = sample_positions(a, 8, replace, seed=43)[0]
    assert not np.array_equal(other, eager[0])


@pytest.mark.parametrize("replace", [True, False])
def test_a_draw_depends_on_its_own_seed_not_on_the_batch(replace):
    """A lone image takes the sampler's loop-free branch, a batch the loop: same cells."""
    maps = np.stack([skewed_map((9,), s) for s in range(4)])
    together = sample_positions(maps, 4, replace, seed=[10, 11, 12, 13])[0]
    for row in range(4):
        alone = sample_positions(maps[row : row + 1], 4, replace, seed=10 + row)[0]
        np.testing.assert_array_equal(together[row], alone[0])
    assert len({tuple(np.ravel(cells)) for cells in together.numpy()}) > 1  # the rows differ


def test_unseeded_draws_differ():
    a = np.full((1, 1000), 1e-3, np.float32)
    first, second = (sample_positions(a, 10, False)[0] for _ in range(2))
    assert not np.array_equal(first, second)


def test_top_k_takes_the_largest_cells_in_order_ties_to_the_lower_index():
    a = np.array([[[0.1, 0.3], [0.05, 0.3]], [[0.4, 0.2], [0.2, 0.2]]], np.float32)
    cells, probs = sample_positions(a, 3, True, mode="top_k")
    np.testing.assert_array_equal(cells, [[[0, 1], [1, 1], [0, 0]], [[0, 0], [0, 1], [1, 0]]])
    np.testing.assert_allclose(probs, [[0.3, 0.3, 0.1], [0.4, 0.2, 0.2]])


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4)])
def test_cells_are_row_major_coordinates_and_probs_their_attention(shape):
    a = tf.constant(skewed_map((2, *shape)))
    for replace in (True, False):
        cells, probs = sample_positions(a, 5, replace, seed=3)
        assert cells.dtype == tf.int32 and cells.shape == (2, 5, len(shape))
        np.testing.assert_array_equal(tf.gather_nd(a, cells, batch_dims=1), probs)


def test_probs_carry_the_gradient_back_to_the_map():
    a = tf.constant(skewed_map((1, 6)))
    with tf.GradientTape() as tape:
        tape.watch(a)
        cells, probs = sample_positions(a, 4, True, seed=5)
        total = tf.reduce_sum(probs)
    counts = np.bincount(cells.numpy()[0, :, 0], minlength=6)
    np.testing.assert_array_equal(tape.gradient(total, a)[0], counts)


def test_bad_requests_are_refused():
    a = skewed_map((1, 4))
    with pytest.raises(tf.errors.InvalidArgumentError, match="exceeds the number"):
        sample_positions(a, 5, False, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="exceeds the number"):
        sample_positions(a, 5, True, mode="top_k")
    with pytest.raises(ValueError, match="mode"):
        sample_positions(a, 2, True, mode="greedy")
    assert sample_positions(a, 9, True, seed=0)[0].shape == (1, 9, 1)
