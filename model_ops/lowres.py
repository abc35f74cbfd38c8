"""The low-resolution view: the one function that makes it, everywhere.

Training, export (``predict_image``) and the server all call
:func:`low_resolution_view`, so a model sees the same pixels at inference as
in training. Area resampling averages every full-resolution pixel a low-res
pixel covers (no aliasing of thin strokes), and the result is rounded back
to uint8 so views stay small and can be cached or sent as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

_ROUNDING = 0.5 + 1e-9  # halves up; the epsilon absorbs float error in products such as 1500 * 0.12


def low_resolution_size(shape: Sequence[int], scale: float) -> tuple[int, int]:
    """Size ``(h, w)`` of the low view of an ``H x W`` image at ``scale``.

    ``round(H * scale)`` with halves rounded up, at least 1 (``ats_model.json``
    ``low_scale``).
    """
    return _scaled(shape[0], scale), _scaled(shape[1], scale)


def _scaled(size: int, scale: float) -> int:
    return max(1, math.floor(size * scale + _ROUNDING))


def low_resolution_size_tensor(shape: tf.Tensor, scale: float) -> tf.Tensor:
    """:func:`low_resolution_size` inside a graph, for an int32 ``(H, W)`` tensor."""
    scaled = tf.cast(shape, tf.float64) * scale + _ROUNDING
    return tf.maximum(tf.cast(tf.floor(scaled), tf.int32), 1)


def low_resolution_view(image: tf.Tensor, size: Sequence[int] | tf.Tensor) -> tf.Tensor:
    """Area-resample ``image`` ``(H, W, C)`` or ``(B, H, W, C)`` uint8 to ``size`` ``(h, w)``.

    Returns uint8 of the same rank (values rounded half away from zero and
    clipped, so no resampling overshoot can wrap around).
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"low_resolution_view takes uint8 images, got {image.dtype.name}")
    resized = resize_area(image, size)
    return tf.cast(tf.clip_by_value(tf.math.floor(resized + 0.5), 0, 255), tf.uint8)


def resize_area(image: tf.Tensor, size: Sequence[int] | tf.Tensor) -> tf.Tensor:
    """``tf.image.resize(image, size, method="area")`` of a uint8 ``(H, W, C)``
    or ``(B, H, W, C)`` image, by the op library's ``AtsResizeArea``: the very
    same float32 values (ResizeArea's operations in ResizeArea's order), in
    about 60% of its time on a megapixel image, where it was a tenth of the
    server's CPU per request (bench/results/service.md). CPU kernel only."""
    from model_ops.op_library import load_op_library  # after TensorFlow, like every op

    image = tf.convert_to_tensor(image)
    if image.shape.rank not in (3, 4):
        raise ValueError(f"resize_area takes (H, W, C) or (B, H, W, C) images, got shape {image.shape}")
    batched = image if image.shape.rank == 4 else image[tf.newaxis]
    resized = load_op_library().ats_resize_area(batched, tf.cast(size, tf.int32))
    return resized if image.shape.rank == 4 else resized[0]
