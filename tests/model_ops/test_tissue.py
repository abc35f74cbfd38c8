"""Tissue masks: Otsu against brute force, masks on synthetic slides, masked attention and sampling."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model_ops.sampling import sample_positions
from model_ops.tissue import cell_mask, masked_attention, otsu_threshold, tissue_mask, tissue_score


def brute_force_otsu(values: np.ndarray) -> tuple[int, float]:
    """Every split ``<= t`` / ``> t`` scored from the pixels themselves; the first best."""
    values = values.ravel().astype(np.float64)
    best_t, best = -1, -1.0
    for t in range(255):
        low, high = values[values <= t], values[values > t]
        if low.size == 0 or high.size == 0:
            continue
        between = low.size * high.size * (low.mean() - high.mean()) ** 2
        if between > best * (1 + 1e-12):
            best_t, best = t, between
    return best_t, best


def between_variance(values: np.ndarray, t: int) -> float:
    values = values.ravel().astype(np.float64)
    low, high = values[values <= t], values[values > t]
    return low.size * high.size * (low.mean() - high.mean()) ** 2


@pytest.mark.parametrize("seed", range(6))
def test_otsu_matches_brute_force_on_bimodal_histograms(seed):
    rng = np.random.default_rng(seed)
    centres = rng.choice(np.arange(20, 236), 2, replace=False)
    sizes = rng.integers(200, 3000, 2)
    values = np.concatenate(
        [np.clip(rng.normal(c, rng.uniform(3, 25), n), 0, 255) for c, n in zip(centres, sizes, strict=True)]
    ).astype(np.uint8)
    expected, best = brute_force_otsu(values)
    found = otsu_threshold(values)
    assert between_variance(values, found) == pytest.approx(best, rel=1e-9)
    assert found == expected


def test_otsu_of_two_spikes_is_the_lowest_split_between_them():
    values = np.array([50] * 300 + [200] * 100, np.uint8)
    assert otsu_threshold(values) == 50  # every t in 50..199 separates them alike: the first
    assert otsu_threshold(np.full(10, 7, np.uint8)) == 7  # no split at all


def synthetic_slide(seed: int, size: int = 160, colour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """White glass with noise and dust, three elliptic tissue blobs; (image, truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((size, size), bool)
    for _ in range(3):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        ry, rx = rng.uniform(0.08, 0.2, 2) * size
        truth |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    glass = rng.normal(238, 4, (size, size, 3))
    stain = np.array([200, 120, 170]) + rng.normal(0, 18, (size, size, 3))  # H&E pink-purple
    image = np.where(truth[..., None], stain, glass)
    dust = rng.integers(0, size, (12, 2))
    image[dust[:, 0], dust[:, 1]] = 60  # single dark specks on the glass
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return (image if colour else np.asarray(image.mean(axis=-1), np.uint8)), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("colour", [True, False])
def test_masks_of_synthetic_slides_match_the_tissue(seed, colour):
    image, truth = synthetic_slide(seed, colour=colour)
    mask = tissue_mask(image)
    assert iou(mask, truth) > 0.9
    assert 0.02 < truth.mean() < 0.6  # the slide is mostly glass and has tissue: the test can fail


def test_cleanup_drops_specks_that_otsu_alone_keeps():
    image = np.full((60, 60, 3), 238, np.uint8)
    image[10:40, 10:40] = (200, 120, 170)  # tissue
    specks = np.array([[50, 5], [5, 50], [55, 55], [50, 30]])
    image[specks[:, 0], specks[:, 1]] = 40  # dust on the glass, darker than the tissue
    score = tissue_score(image)
    raw = score > otsu_threshold(score)
    cleaned = tissue_mask(image)
    assert raw[specks[:, 0], specks[:, 1]].all()
    assert not cleaned[specks[:, 0], specks[:, 1]].any()
    assert cleaned[10:40, 10:40].all() and cleaned.sum() == 900


def test_no_tissue_means_no_mask():
    rng = np.random.default_rng(3)
    glass = np.clip(rng.normal(238, 4, (80, 80, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask(glass).all()  # noise on glass is one population: nothing hidden
    assert tissue_mask(np.full((40, 40), 240, np.uint8)).all()
    speck = np.full((80, 80, 3), 240, np.uint8)
    speck[5, 5] = 0  # one pixel of "tissue" is under the minimum share and cleaned away
    assert tissue_mask(speck).all()


def test_rgba_and_single_channel_inputs():
    image, _ = synthetic_slide(2)
    rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(tissue_mask(rgba), tissue_mask(image))
    gray = np.asarray(image.mean(axis=-1), np.uint8)
    np.testing.assert_array_equal(tissue_mask(gray[..., None]), tissue_mask(gray))
    with pytest.raises(ValueError):
        tissue_mask(image.astype(np.float32))


def test_cell_mask_covers_the_area_each_cell_stands_for():
    mask = np.zeros((12, 12), bool)
    mask[0:3, 9:12] = True  # one cell of a 4x4 map of 3-pixel cells
    mask[7, 1] = True  # a single pixel: its cell keeps attention by default
    cells = cell_mask(mask, (4, 4))
    expected = np.zeros((4, 4), bool)
    expected[0, 3] = expected[2, 0] = True
    np.testing.assert_array_equal(cells, expected)
    strict = cell_mask(mask, (4, 4), min_fraction=0.5)
    expected[2, 0] = False
    np.testing.assert_array_equal(strict, expected)
    # a receptive field of 4 view pixels: cells cover [2, 10) in steps of 2
    shifted = cell_mask(mask, (4, 4), receptive_field=4)
    assert shifted.shape == (4, 4) and shifted[0, 3] and not shifted[3, 0]
    assert not shifted[2, 0]  # pixel (7, 1) is left of column 2, where the map's area starts


def random_maps(batch: int, shape: tuple[int, int], seed: int) -> tf.Tensor:
    logits = tf.random.stateless_normal((batch, *shape), seed=(seed, 0))
    return tf.reshape(tf.nn.softmax(tf.reshape(logits, (batch, -1))), (batch, *shape))


def test_masked_attention_is_zero_on_background_and_sums_to_one():
    attention = random_maps(3, (6, 7), seed=1)
    mask = np.random.default_rng(0).random((6, 7)) < 0.4
    out = masked_attention(attention, mask).numpy()
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    assert (out[:, ~mask] == 0).all()
    kept = attention.numpy() * mask
    np.testing.assert_allclose(out, kept / kept.sum(axis=(1, 2), keepdims=True), rtol=1e-6)
    per_map = np.stack([mask, ~mask, mask])  # a mask per map of the batch
    out = masked_attention(attention, per_map).numpy()
    assert (out[1, mask] == 0).all() and (out[0, ~mask] == 0).all()


def test_attention_only_on_background_falls_back_to_uniform_tissue():
    attention = np.zeros((2, 3, 3), np.float32)
    attention[:, 0, 0] = 1.0  # all of it on a background cell
    mask = np.zeros((3, 3), bool)
    mask[1:, 1:] = True
    with tf.GradientTape() as tape:
        values = tf.constant(attention)
        tape.watch(values)
        out = masked_attention(values, mask)
        loss = tf.reduce_sum(out * tf.range(9, dtype=tf.float32)[None, :, None][:, :3])
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(mask / 4, (2, 3, 3)))
    assert np.isfinite(tape.gradient(loss, values).numpy()).all()
    unchanged = masked_attention(attention, np.zeros((3, 3), bool)).numpy()
    np.testing.assert_array_equal(unchanged, attention)  # no tissue at all: nothing to prefer


@pytest.mark.parametrize("replace", [True, False])
def test_sampling_from_a_masked_map_never_picks_background(replace):
    attention = random_maps(4, (5, 5), seed=2)
    mask = np.random.default_rng(1).random((5, 5)) < 0.5
    masked = masked_attention(attention, mask)
    picked = []
    for seed in range(40):
        cells, probs = sample_positions(masked, 8 if replace else int(mask.sum()), replace, seed=seed)
        picked.append(cells.numpy().reshape(-1, 2))
        assert (probs.numpy() > 0).all()
    picked = np.concatenate(picked)
    assert mask[picked[:, 0], picked[:, 1]].all()
    assert len({tuple(cell) for cell in picked}) == mask.sum()  # every tissue cell is reachable


@pytest.mark.parametrize(
    ("shape", "receptive_field", "min_fraction"),
    [((97, 101), 0, 0.0), ((50, 40), 6, 0.3), ((7, 9), (2, 5), 0.9)],
)
def test_cell_mask_counts_each_cell_as_a_loop_over_its_pixels_would(shape, receptive_field, min_fraction):
    """The summed-area table gives every cell's tissue fraction exactly."""
    mask = np.random.default_rng(3).random((211, 233)) > 0.6
    fields = np.broadcast_to(np.asarray(receptive_field, np.float64), (2,))
    expected = np.zeros(shape, bool)
    steps = [(size - field) / cells for size, cells, field in zip(mask.shape, shape, fields, strict=True)]
    for row in range(shape[0]):
        for col in range(shape[1]):
            box = []
            for axis, index in ((0, row), (1, col)):
                start = int(np.floor(fields[axis] / 2 + index * steps[axis]))
                end = max(int(np.ceil(fields[axis] / 2 + (index + 1) * steps[axis])), start + 1)
                box.append(
                    slice(min(max(start, 0), mask.shape[axis] - 1), min(max(end, 1), mask.shape[axis]))
                )
            expected[row, col] = mask[tuple(box)].mean() > min_fraction
    np.testing.assert_array_equal(cell_mask(mask, shape, receptive_field, min_fraction), expected)
