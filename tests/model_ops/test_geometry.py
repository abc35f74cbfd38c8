"""Cell-to-offset geometry and the low-resolution view."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from model_ops.geometry import cells_to_offsets
from model_ops.lowres import low_resolution_size, low_resolution_view


def test_the_reference_worked_example():
    offsets = cells_to_offsets([[[12, 0], [0, 12]]], [100, 100], [1000, 1000], [25, 25], 50)
    np.testing.assert_array_equal(offsets, [[[475, -5], [-5, 475]]])
    assert offsets.dtype == tf.int32


def test_receptive_field_shifts_and_shrinks_the_covered_area():
    # steps = (100 - 4) * 10 / 24 = 40; start = 4/2*10 + cell*40 + 20 - 25
    offsets = cells_to_offsets([[[0], [23]]], [100], [1000], [24], [50], receptive_field=4)
    np.testing.assert_array_equal(offsets, [[[15], [935]]])


def exact_start(cell, low, high, size, patch, rf):
    """The formula in exact rational arithmetic, rounded half to even."""
    scale = Fraction(high, low)
    steps = (low - rf) * scale / size
    return round(Fraction(rf, 2) * scale + cell * steps + steps / 2 - Fraction(patch, 2))


@pytest.mark.parametrize("seed", range(3))
def test_random_configurations_match_exact_arithmetic(seed):
    rng = np.random.default_rng(seed)
    ndim = seed + 1
    low = rng.integers(20, 3000, ndim)
    high = low * rng.integers(1, 100, ndim) + rng.integers(0, 50, ndim)  # up to ~300k pixels
    rf = rng.integers(0, 10, ndim)
    size = low - rf - rng.integers(0, 5, ndim)
    patch = rng.integers(1, 300, ndim)
    cells = rng.integers(0, size, (2, 7, ndim))
    got = cells_to_offsets(cells, low, high, size, patch, rf).numpy()
    want = [
        [
            [
                exact_start(int(c[d]), int(low[d]), int(high[d]), int(size[d]), int(patch[d]), int(rf[d]))
                for d in range(ndim)
            ]
            for c in row
        ]
        for row in cells
    ]
    np.testing.assert_array_equal(got, want)


def test_shapes_may_be_dynamic_tensors():
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, 2], tf.int32),
            tf.TensorSpec([None, None, None, 3], tf.uint8),
            tf.TensorSpec([None, None, None, 3], tf.uint8),
            tf.TensorSpec([None, None, None]),
        ]
    )
    def offsets(cells, x_low, x_high, attention):
        return cells_to_offsets(
            cells, tf.shape(x_low)[1:3], tf.shape(x_high)[1:3], tf.shape(attention)[1:], [50, 50]
        )

    got = offsets(
        tf.constant([[[12, 0]]]),
        tf.zeros([1, 100, 100, 3], tf.uint8),
        tf.zeros([1, 1000, 1000, 3], tf.uint8),
        tf.zeros([1, 25, 25]),
    )
    np.testing.assert_array_equal(got, [[[475, -5]]])


def test_low_resolution_size_rounds_the_scaled_shape():
    assert low_resolution_size((1500, 1500, 1), 0.12) == (180, 180)
    assert low_resolution_size((960, 1280, 3), 0.3) == (288, 384)
    assert low_resolution_size((5, 3), 0.1) == (1, 1)
    assert low_resolution_size((25, 15), 0.1) == (3, 2)  # 2.5 rounds up, 1.5 rounds up


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row i: how much of each input pixel lies in output pixel i, normalised."""
    edges = np.arange(n_out + 1) * n_in / n_out
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(n_in)[None]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shape,size", [((40, 60, 3), (10, 15)), ((37, 23, 1), (10, 7)), ((9, 9, 2), (9, 9))])
def test_view_is_the_area_average_rounded_to_uint8(shape, size):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    view = low_resolution_view(image, size).numpy()
    assert view.dtype == np.uint8 and view.shape == (*size, shape[2])
    want = np.einsum(
        "ih,jw,hwc->ijc",
        area_matrix(shape[0], size[0]),
        area_matrix(shape[1], size[1]),
        image.astype(np.float64),
    )
    assert np.max(np.abs(view - want)) <= 0.5 + 1e-3


def test_view_of_a_batch_equals_the_views_of_its_images():
    images = np.random.default_rng(2).integers(0, 256, (3, 50, 40, 3), dtype=np.uint8)
    batch = low_resolution_view(images, (12, 9)).numpy()
    for image, view in zip(images, batch, strict=True):
        np.testing.assert_array_equal(low_resolution_view(image, (12, 9)), view)


def test_extremes_do_not_wrap_around():
    image = np.full((30, 30, 1), 255, np.uint8)
    assert np.all(low_resolution_view(image, (7, 7)).numpy() == 255)


def test_view_refuses_float_images():
    with pytest.raises(TypeError, match="uint8"):
        low_resolution_view(np.zeros((4, 4, 1), np.float32), (2, 2))


def test_cell_grid_places_each_patch_on_its_cell_centre():
    from model_ops.geometry import cell_grid

    low, high, att, rf, patch = (100, 60), (1000, 900), (25, 14), 4, (50, 40)
    steps, origin = (t.numpy() for t in cell_grid(low, high, att, rf))
    np.testing.assert_allclose(steps, [(100 - 4) * 10 / 25, (60 - 4) * 15 / 14])
    np.testing.assert_allclose(origin, [2 * 10, 2 * 15])
    cells = np.stack(np.meshgrid(np.arange(25), np.arange(14), indexing="ij"), -1).reshape(1, -1, 2)
    offsets = cells_to_offsets(cells, low, high, att, patch, rf).numpy()
    centres = origin + (cells + 0.5) * steps
    assert np.abs(offsets + np.array(patch) / 2 - centres).max() <= 0.5
