"""The compiled patch op against the NumPy oracle: every dtype, 1-D to 3-D,
offsets inside, across and entirely outside the image, eager and in graphs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model_ops import extract_patches
from tests.model_ops.test_extract_patches_reference import (
    DTYPES,
    random_case,
    random_images,
    reference_patches,
)


def run_op(mode, images, offsets, size, **kwargs):
    if mode == "eager":
        return extract_patches(images, offsets, size, **kwargs).numpy()
    fn = tf.function(lambda x, o: extract_patches(x, o, size, **kwargs))
    return fn(tf.constant(images), tf.constant(offsets)).numpy()


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("n_dims", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_matches_numpy_on_random_cases(dtype, n_dims, mode):
    rng = np.random.default_rng([n_dims, DTYPES.index(dtype)])
    for _ in range(6):
        images, offsets, size = random_case(rng, n_dims, dtype)
        fill = 7 if np.issubdtype(dtype, np.integer) else -1.5
        got = run_op(mode, images, offsets, size, fill_value=fill)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, reference_patches(images, offsets, size, fill))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n_dims", [1, 2, 3])
def test_integer_images_to_float32_with_scale(dtype, n_dims):
    rng = np.random.default_rng(n_dims)
    scale = 1 / float(np.iinfo(dtype).max)
    for _ in range(4):
        images, offsets, size = random_case(rng, n_dims, dtype)
        got = run_op("eager", images, offsets, size, output_dtype=tf.float32, scale=scale, fill_value=-1)
        want = reference_patches(images, offsets, size, -1, np.float32, scale)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        inside = got[got != -1]
        assert inside.size == 0 or (inside.min() >= 0 and inside.max() <= 1)


def test_float_images_with_scale_multiply_inside_the_op():
    rng = np.random.default_rng(3)
    images, offsets, size = random_case(rng, 2, np.float64)
    got = run_op("eager", images, offsets, size, scale=0.25)
    np.testing.assert_array_equal(got, reference_patches(images, offsets, size, 0, None, 0.25))


def test_large_image_and_patches_cross_every_border():
    rng = np.random.default_rng(4)
    images = random_images(rng, (2, 300, 257, 3), np.uint8)
    offsets = np.array(
        [[[-10, -10], [290, 250], [100, 100], [-64, 0]], [[0, 200], [250, -5], [299, 256], [150, 40]]],
        np.int32,
    )
    got = extract_patches(images, offsets, (64, 48)).numpy()
    np.testing.assert_array_equal(got, reference_patches(images, offsets, (64, 48)))


def test_empty_batch_patches_and_channels():
    images = np.zeros((2, 5, 5, 3), np.float32)
    assert extract_patches(images, np.zeros((2, 0, 2), np.int32), 3).shape == (2, 0, 3, 3, 3)
    assert extract_patches(np.zeros((0, 5, 5, 3), np.float32), np.zeros((0, 4, 2), np.int32), 3).shape == (
        0,
        4,
        3,
        3,
        3,
    )
    assert extract_patches(np.zeros((1, 5, 5, 0), np.uint8), np.zeros((1, 2, 2), np.int32), 2).shape == (
        1,
        2,
        2,
        2,
        0,
    )


def test_int64_offsets_and_tensor_patch_size_are_accepted():
    images = np.arange(2 * 6 * 6 * 1, dtype=np.float32).reshape(2, 6, 6, 1)
    offsets = np.array([[[1, 2]], [[4, -1]]], np.int64)
    got = extract_patches(images, offsets, tf.constant([3, 2])).numpy()
    np.testing.assert_array_equal(got, reference_patches(images, offsets, (3, 2)))


def test_static_shape_inference():
    @tf.function
    def fn(x, o):
        out = extract_patches(x, o, (5, 7))
        assert out.shape.as_list() == [2, 4, 5, 7, 3]
        return out

    fn(tf.zeros((2, 20, 20, 3)), tf.zeros((2, 4, 2), tf.int32))


def test_dynamic_shape_inference():
    shapes = []

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8),
            tf.TensorSpec([None, None, 2], tf.int32),
            tf.TensorSpec([2], tf.int32),
        ]
    )
    def fn(x, o, size):
        shapes.append(extract_patches(x, o, 9).shape.as_list())
        shapes.append(extract_patches(x, o, size).shape.as_list())
        shapes.append(extract_patches(x, o, size[::-1] * 2).shape.as_list())
        return extract_patches(x, o, size)

    out = fn(tf.zeros((1, 8, 8, 3), tf.uint8), tf.zeros((1, 2, 2), tf.int32), tf.constant([4, 6]))
    assert shapes == [[None, None, 9, 9, 3], [None, None, None, None, 3], [None, None, None, None, 3]]
    assert out.shape == (1, 2, 4, 6, 3)


def test_unknown_rank_images_take_rank_from_offsets():
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([1, 3, 3], tf.int32)])
    def fn(x, o):
        out = extract_patches(x, o, 2)
        assert out.shape.as_list() == [1, 3, 2, 2, 2, None]
        return out

    assert fn(tf.zeros((1, 4, 4, 4, 5)), tf.zeros((1, 3, 3), tf.int32)).shape == (1, 3, 2, 2, 2, 5)
