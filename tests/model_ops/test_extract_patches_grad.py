"""Gradient of the patch op with respect to float images: the scatter-add
adjoint (overlaps accumulate, outside pixels drop), checked numerically in
float64 and against the NumPy adjoint; deterministic on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model_ops import extract_patches
from tests.model_ops.test_extract_patches_reference import reference_scatter

CASES = {  # image shape, offsets per batch item, patch size; overlapping, across borders
    1: ((2, 7, 2), [[[-2], [1], [3], [5]], [[0], [0], [-9], [6]]], (4,)),
    2: ((1, 5, 6, 2), [[[-1, -2], [0, 1], [1, 2], [3, 4], [9, 9]]], (3, 4)),
    3: ((1, 4, 3, 5, 1), [[[-1, 0, 1], [0, 1, 2], [2, -1, 3]]], (2, 3, 3)),
}


def _gradient(images, offsets, size, upstream, **kwargs):
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(extract_patches(x, offsets, size, **kwargs) * upstream)
    return tape.gradient(loss, x).numpy()


@pytest.mark.parametrize("n_dims", [1, 2, 3])
def test_gradient_matches_finite_differences_in_float64(n_dims):
    shape, offsets, size = CASES[n_dims]
    images = np.random.default_rng(n_dims).normal(size=shape)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x: extract_patches(x, np.array(offsets, np.int32), size, fill_value=3.0), [tf.constant(images)]
    )
    assert np.abs(theoretical[0]).sum() > 0
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)


@pytest.mark.parametrize("dtype, rtol", [(np.float16, 1e-2), (np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("n_dims", [1, 2, 3])
def test_gradient_matches_numpy_adjoint(n_dims, dtype, rtol):
    shape, offsets, size = CASES[n_dims]
    offsets = np.array(offsets, np.int32)
    rng = np.random.default_rng(n_dims)
    upstream = rng.normal(size=(shape[0], offsets.shape[1], *size, shape[-1])).astype(dtype)
    got = _gradient(rng.normal(size=shape).astype(dtype), offsets, size, upstream, scale=0.5)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, reference_scatter(upstream, offsets, shape, 0.5), rtol=rtol, atol=rtol)


def test_overlapping_patches_accumulate_and_outside_pixels_drop():
    images = np.zeros((1, 4, 4, 1), np.float32)
    offsets = np.array([[[0, 0], [1, 1], [1, 1], [-1, 3], [10, 10]]], np.int32)
    got = _gradient(images, offsets, (2, 2), 1.0)[0, ..., 0]
    np.testing.assert_array_equal(got, [[1, 1, 0, 1], [1, 3, 2, 0], [0, 2, 2, 0], [0, 0, 0, 0]])


def test_gradient_is_deterministic_on_cpu():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    offsets = rng.integers(-8, 40, size=(2, 200, 2)).astype(np.int32)
    upstream = rng.normal(size=(2, 200, 32, 32, 3)).astype(np.float32)
    first = _gradient(images, offsets, (32, 32), upstream)
    for _ in range(3):
        np.testing.assert_array_equal(_gradient(images, offsets, (32, 32), upstream), first)


def test_offsets_get_no_gradient_and_graph_mode_works():
    images = tf.constant(np.ones((1, 6, 6, 1)))
    offsets = tf.constant([[[1, 1], [2, 3]]], tf.int32)

    @tf.function
    def grads():
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([images, offsets])
            loss = tf.reduce_sum(extract_patches(images, offsets, 3))
        image_grad = tape.gradient(loss, images)
        assert image_grad.shape.as_list() == [1, 6, 6, 1]  # the gradient op's shape function
        return image_grad, tape.gradient(loss, offsets)

    image_grad, offset_grad = grads()
    assert offset_grad is None
    assert float(tf.reduce_sum(image_grad)) == 18.0


def test_second_order_gradient_is_the_op_again():
    shape, offsets, size = CASES[2]
    offsets = np.array(offsets, np.int32)
    images = tf.constant(np.random.default_rng(1).normal(size=shape))
    upstream_shape = (shape[0], offsets.shape[1], *size, shape[-1])

    def image_gradient(upstream):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(extract_patches(images, offsets, size, scale=2.0) * upstream)
        return tape.gradient(loss, images)

    theoretical, numerical = tf.test.compute_gradient(
        image_gradient, [tf.constant(np.random.default_rng(2).normal(size=upstream_shape))]
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)
