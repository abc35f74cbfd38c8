"""AtsResizeArea (model_ops.lowres.resize_area) gives TensorFlow's ResizeArea
values bit for bit: the low views, and so the attention maps and the sampled
patches of every model, do not move when the server uses it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model_ops.lowres import low_resolution_view, resize_area


def assert_bitwise(got: tf.Tensor, want: tf.Tensor) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def image(rng: np.random.Generator, shape: tuple[int, ...], kind: int) -> np.ndarray:
    """Noise, two-level strokes (the canvases' kind) or one value everywhere."""
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    if kind == 1:
        return (pixels > 200).astype(np.uint8) * 255
    return np.full(shape, int(pixels.flat[0]), np.uint8) if kind == 2 else pixels


def test_random_shapes_down_and_up_are_bitwise_resize_area():
    rng = np.random.default_rng(7)
    for case in range(240):
        batch, channels = int(rng.integers(1, 3)), int(rng.choice([1, 2, 3, 4]))
        height, width = (int(v) for v in rng.integers(1, 260, 2))
        size = [int(v) for v in rng.integers(1, 200, 2)]
        pixels = image(rng, (batch, height, width, channels), case % 3)
        assert_bitwise(resize_area(pixels, size), tf.image.resize(pixels, size, method="area"))


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1500, 1500, 1), (180, 180)),
        ((1500, 1500, 3), (180, 181)),
        ((3001, 17, 1), (7, 3)),
        ((1, 1, 1), (5, 7)),
    ],
)
def test_the_server_sizes_and_extremes(shape, size):
    pixels = image(np.random.default_rng(1), shape, 1)
    assert_bitwise(resize_area(pixels, size), tf.image.resize(pixels, size, method="area"))


def test_low_views_in_a_graph_with_unknown_sizes_are_unchanged():
    """Traced once for any size, as the server's fused graph is."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8), tf.TensorSpec([2], tf.int32)]
    )
    def view(images, size):
        return low_resolution_view(images, size)

    rng = np.random.default_rng(3)
    for height, width, size in ((300, 200, (36, 24)), (97, 131, (11, 16)), (64, 64, (64, 64))):
        pixels = image(rng, (2, height, width, 1), 0)
        want = tf.image.resize(pixels, size, method="area")
        want = tf.cast(tf.clip_by_value(tf.math.floor(want + 0.5), 0, 255), tf.uint8)
        np.testing.assert_array_equal(view(pixels, np.array(size, np.int32)), want)


def test_bad_sizes_are_refused():
    pixels = np.zeros((1, 8, 8, 1), np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="size must be positive"):
        resize_area(pixels, tf.constant([0, 4]))
    with pytest.raises(ValueError, match="images"):
        resize_area(np.zeros((8, 8), np.uint8), (4, 4))
