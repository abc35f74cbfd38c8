"""Drawing regions then patches: frequencies, independence of slots, seeds, geometry.

Frequency tests are chi-square goodness-of-fit tests at significance
``ALPHA`` (as in test_sampling.py): with fixed seeds they are deterministic,
and a correct sampler fails one only with probability ``ALPHA`` over the
choice of seeds (at most 5 * ALPHA = 5e-4 for the five of this file
together, by a union bound). Each also rejects a slightly wrong hypothesis with the same
counts, so it has power.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model_ops.geometry import patch_offsets, region_offsets
from model_ops.sampling import sample_positions
from model_ops.two_level import region_seeds, sample_patches_in_regions
from tests.model_ops.test_sampling import ROWS, assert_fits, perturbed, skewed_map

COARSE = np.array([0.5, 0.3, 0.2])
FINE = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.15, 0.35, 0.25]])


def draw(k: int, n: int, replace_regions: bool, replace_patches: bool, rows: int = ROWS):
    """``rows`` two-level draws: regions ``(rows, K)`` and patches ``(rows, K, N)``, flat indices."""
    seeds = tf.range(rows, dtype=tf.int64) + 1
    coarse = np.broadcast_to(COARSE.astype(np.float32), (rows, len(COARSE)))
    cells, _ = sample_positions(coarse, k, replace_regions, seed=seeds)
    regions = cells.numpy()[..., 0]
    fine = FINE.astype(np.float32)[regions]  # each slot's map is its region's
    patches, probs = sample_patches_in_regions(fine, n, replace_patches, seed=seeds)
    np.testing.assert_array_equal(probs, np.take_along_axis(fine, patches.numpy()[..., 0], axis=2))
    return regions, patches.numpy()[..., 0]


@pytest.mark.parametrize("replace_regions", [True, False])
@pytest.mark.parametrize("replace_patches", [True, False])
def test_region_and_first_patch_follow_a_times_b(replace_regions, replace_patches):
    """P(slot-1 region r, its first patch p) = a(r) b(p | r), in every mode."""
    regions, patches = draw(2, 2, replace_regions, replace_patches)
    joint = (COARSE[:, None] * FINE).ravel()
    counts = np.bincount(regions[:, 0] * FINE.shape[1] + patches[:, 0, 0], minlength=joint.size)
    assert_fits(counts, joint, perturbed(joint))


def test_the_same_region_drawn_twice_draws_its_patches_independently():
    """With replacement a region may fill two slots: their patch draws must be
    independent (the estimator needs it), not copies of one another."""
    regions, patches = draw(2, 1, replace_regions=True, replace_patches=True)
    twice = regions[:, 0] == regions[:, 1]
    region = 0
    rows = twice & (regions[:, 0] == region)
    b = FINE[region]
    pairs = patches[rows][:, 0, 0] * len(b) + patches[rows][:, 1, 0]
    independent = np.outer(b, b).ravel()
    half_copied = 0.5 * independent + 0.5 * np.diag(b).ravel()
    assert_fits(np.bincount(pairs, minlength=independent.size), independent, half_copied)


def test_patches_without_replacement_are_distinct_within_each_slot():
    _, patches = draw(3, 4, replace_regions=False, replace_patches=False, rows=300)
    assert all(len(set(slot)) == 4 for row in patches for slot in row)


def test_region_seeds_depend_on_the_image_seed_and_the_slot_only():
    together = region_seeds(tf.constant([7, 8, 9], tf.int64), 3, 4).numpy().reshape(3, 4)
    alone = region_seeds(8, 1, 4).numpy()
    np.testing.assert_array_equal(together[1], alone)
    assert len(set(together.ravel())) == 12
    assert region_seeds(None, 3, 4) is None


def test_patch_draws_reproduce_and_do_not_depend_on_the_batch():
    maps = np.stack([skewed_map((3, 2, 5), s) for s in range(3)])
    seeds = tf.constant([4, 5, 6], tf.int64)
    together = sample_patches_in_regions(maps, 3, False, seed=seeds)[0]
    alone = sample_patches_in_regions(maps[1:2], 3, False, seed=5)[0]
    np.testing.assert_array_equal(together[1], alone[0])
    np.testing.assert_array_equal(together, sample_patches_in_regions(maps, 3, False, seed=seeds)[0])
    assert together.shape == (3, 3, 3, 2)


def test_top_k_takes_each_regions_largest_cells():
    maps = skewed_map((2, 3, 4, 4))
    cells, probs = sample_patches_in_regions(maps, 2, False, mode="top_k")
    for b in range(2):
        for k in range(3):
            flat = maps[b, k].ravel()
            want = np.argsort(-flat, kind="stable")[:2]
            np.testing.assert_array_equal(np.ravel_multi_index(tuple(cells[b, k].numpy().T), (4, 4)), want)
            np.testing.assert_allclose(probs[b, k], flat[want])


def test_geometry_worked_example():
    """Image 1000x1000, coarse view 100x100 with a 10x10 map (a cell is 100 level-0
    pixels), regions of 256, region views of 64 with an 8x8 map (a fine cell is
    32 level-0 pixels), patches of 32."""
    regions = region_offsets(tf.constant([[[3, 7], [0, 0]]]), (100, 100), (1000, 1000), (10, 10), 256)
    # coarse cell (3, 7): centre (350, 750), region start (222, 622); cell (0, 0): centre 50 -> -78
    np.testing.assert_array_equal(regions, [[[222, 622], [-78, -78]]])
    cells = tf.constant([[[[0, 5], [7, 7]], [[4, 4], [0, 0]]]])
    patches = patch_offsets(regions, cells, (64, 64), (256, 256), (8, 8), (32, 32))
    # fine cell (0, 5): centre (16, 176) in the region, patch start (0, 160) -> (222, 782)
    np.testing.assert_array_equal(patches, [[[[222, 782], [446, 846]], [[50, 50], [-78, -78]]]])


def test_geometry_with_receptive_fields_and_rectangles():
    """Each level applies ``cells_to_offsets`` with its own receptive field and sizes."""
    regions = region_offsets(tf.constant([[[1, 2]]]), (50, 80), (500, 1600), (5, 4), (100, 300), 10)
    # y: scale 10, rf 10 -> steps (50-10)*10/5 = 80, origin 50: centre 50+80+40 = 170, start 120
    # x: scale 20, rf 10 -> steps (80-10)*20/4 = 350, origin 100: centre 100+700+175 = 975, start 825
    np.testing.assert_array_equal(regions, [[[120, 825]]])
    patches = patch_offsets(regions, tf.constant([[[[0, 0]]]]), (25, 75), (100, 300), (5, 5), (10, 20), 5)
    # y: scale 4, steps (25-5)*4/5 = 16, origin 10: centre 18, start 13 -> 133
    # x: scale 4, steps (75-5)*4/5 = 56, origin 10: centre 38, start 28 -> 853
    np.testing.assert_array_equal(patches, [[[[133, 853]]]])
