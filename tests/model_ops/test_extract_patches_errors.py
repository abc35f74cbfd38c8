"""Bad input never crashes: each case raises InvalidArgumentError naming the
problem, eagerly and in graphs whose shapes are only known at run time (and
ValueError while tracing when the graph knows the bad shape statically)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model_ops import extract_patches, load_op_library

IMG = np.zeros((2, 8, 8, 3), np.float32)
OFF = np.zeros((2, 4, 2), np.int32)

CASES = {
    "images rank 2": (np.zeros((8, 8), np.float32), OFF, [2, 2], {}, "images must have rank 3, 4 or 5"),
    "images rank 6": (
        np.zeros((1, 2, 2, 2, 2, 1), np.float32),
        np.zeros((1, 1, 4), np.int32),
        [1, 1, 1, 1],
        {},
        "images must have rank 3, 4 or 5",
    ),
    "offsets rank 2": (IMG, np.zeros((2, 2), np.int32), [2, 2], {}, "offsets must have"),
    "offsets last dim": (IMG, np.zeros((2, 4, 3), np.int32), [2, 2], {}, "offsets must have"),
    "batch mismatch": (IMG, np.zeros((3, 4, 2), np.int32), [2, 2], {}, "batch size mismatch"),
    "zero patch size": (IMG, OFF, [0, 2], {}, "patch_size values must be"),
    "negative patch size": (IMG, OFF, [2, -3], {}, "patch_size values must be"),
    "patch size length": (IMG, OFF, [2, 2, 2], {}, "patch_size must have 2 value"),
    "patch size matrix": (IMG, OFF, [[2, 2]], {}, "patch_size must be a vector"),
    "absurd patch size": (IMG, OFF, [2**31 - 1, 2**31 - 1], {}, "would have more than 2147483647 elements"),
    "over max_output_bytes": (
        IMG,
        OFF,
        [128, 128],
        {"max_output_bytes": 1 << 20},
        "more than max_output_bytes=1048576",
    ),
}


def _call(images, offsets, size, kwargs):
    return extract_patches(images, offsets, tf.constant(size, tf.int32), **kwargs)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_eager_bad_input_raises_invalid_argument(case):
    images, offsets, size, kwargs, message = CASES[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _call(images, offsets, size, kwargs)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dynamic_graph_bad_input_raises_invalid_argument(case):
    images, offsets, size, kwargs, message = CASES[case]
    fn = tf.function(
        lambda x, o, s: extract_patches(x, o, s, **kwargs),
        input_signature=[
            tf.TensorSpec(None, images.dtype),
            tf.TensorSpec(None, tf.int32),
            tf.TensorSpec(None, tf.int32),
        ],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(images, offsets, np.array(size, np.int32))


@pytest.mark.parametrize(
    "case", ["images rank 2", "offsets last dim", "batch mismatch", "zero patch size", "patch size length"]
)
def test_static_graph_bad_input_fails_while_tracing(case):
    images, offsets, size, kwargs, message = CASES[case]
    fn = tf.function(lambda x, o: _call(x, o, size, kwargs))
    with pytest.raises(ValueError, match=message):
        fn(tf.constant(images), tf.constant(offsets))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0.5}, "scale must be 1 for integer output"),
        ({"fill_value": 256}, r"fill_value must be an integer in \[0, 255\]"),
        ({"fill_value": -1}, "fill_value must be an integer"),
        ({"fill_value": 0.5}, "fill_value must be an integer"),
        ({"max_output_bytes": 0}, "max_output_bytes must be positive"),
    ],
)
def test_bad_attributes_raise_invalid_argument(kwargs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        extract_patches(IMG.astype(np.uint8), OFF, 2, **kwargs)


@pytest.mark.parametrize(
    "images_dtype, output_dtype",
    [(np.float32, tf.float64), (np.float16, tf.float32), (np.uint8, tf.uint16), (np.int32, None)],
)
def test_unsupported_dtypes_raise_type_error(images_dtype, output_dtype):
    with pytest.raises(TypeError, match=r"extract_patches supports|output_dtype must be"):
        extract_patches(IMG.astype(images_dtype), OFF, 2, output_dtype=output_dtype)


@pytest.mark.parametrize(
    "grad_shape, image_shape, message",
    [
        ((2, 4, 3, 3, 3), [2, 8, 8, 3, 1, 1], "image_shape must have 3, 4 or 5 values"),
        ((2, 4, 3, 3), [2, 8, 8, 3], "the patch gradient must have rank 5"),
        ((2, 5, 3, 3, 3), [2, 8, 8, 3], r"the patch gradient has shape \[2, 5, 3, 3, 3\]"),
        ((2, 4, 3, 3, 2), [2, 8, 8, 3], "but image_shape and offsets imply"),
        ((2, 4, 3, 3, 3), [2, -8, 8, 3], "image dimensions must be in"),
    ],
)
def test_gradient_op_bad_input_raises_invalid_argument(grad_shape, image_shape, message):
    ops = load_op_library()
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.ats_extract_patches_grad(np.zeros(grad_shape, np.float32), OFF, image_shape)
