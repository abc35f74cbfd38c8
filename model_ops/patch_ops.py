"""``extract_patches``: cut patches at integer offsets with the compiled op.

The gradient is attached with ``tf.custom_gradient`` (not
``tf.RegisterGradient``) so that it is saved inside SavedModels: a fresh
process only needs ``load_op_library()`` to run and differentiate them.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from model_ops.op_library import load_op_library

# Default cap on the output size: a request for more is an error, not an OOM.
DEFAULT_MAX_OUTPUT_BYTES = 1 << 32
_DTYPES = (tf.uint8, tf.uint16, tf.float16, tf.float32, tf.float64)


def _output_dtype(images_dtype: tf.DType, output_dtype) -> tf.DType:
    if images_dtype not in _DTYPES:
        raise TypeError(
            f"extract_patches supports images of {[d.name for d in _DTYPES]}, got {images_dtype.name}"
        )
    out = images_dtype if output_dtype is None else tf.as_dtype(output_dtype)
    converts = out == tf.float32 and images_dtype in (tf.uint8, tf.uint16)
    if out != images_dtype and not converts:
        raise TypeError(
            f"output_dtype must be the images' dtype ({images_dtype.name}) or "
            f"float32 for uint8/uint16 images, got {out.name}"
        )
    return out


def _spatial_dims(images: tf.Tensor, offsets: tf.Tensor) -> int:
    if images.shape.rank is not None:
        return images.shape.rank - 2
    if offsets.shape.rank == 3 and offsets.shape[-1] is not None:
        return offsets.shape[-1]
    raise ValueError(
        "an int patch_size needs images of known rank or offsets of known "
        "shape (B, N, n); pass one size per spatial dimension instead"
    )


def _patch_size(patch_size, images: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
    """patch_size as an int32 vector, an int meaning the same size on every axis."""
    if isinstance(patch_size, int):
        patch_size = [patch_size] * _spatial_dims(images, offsets)
    elif isinstance(patch_size, Sequence):
        patch_size = [int(p) for p in patch_size]
    return tf.cast(patch_size, tf.int32)


def _scatter(
    ops, grad: tf.Tensor, offsets: tf.Tensor, image_shape: tf.Tensor, size: tf.Tensor, scale: float
) -> tf.Tensor:
    """Adjoint of the op (its gradient); its own gradient is the op again."""

    @tf.custom_gradient
    def scatter(grad):
        def second_order(upstream):
            return ops.ats_extract_patches(upstream, offsets, size, out_type=upstream.dtype, scale=scale)

        return ops.ats_extract_patches_grad(grad, offsets, image_shape, scale=scale), second_order

    return scatter(grad)


def extract_patches(
    images,
    offsets,
    patch_size: int | Sequence[int] | tf.Tensor,
    fill_value: float = 0,
    output_dtype=None,
    scale: float = 1.0,
    name: str | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> tf.Tensor:
    """Patches ``(B, N, *patch_size, C)`` of ``images`` ``(B, D1..Dn, C)``, n in 1..3.

    ``offsets`` ``(B, N, n)`` are top-left corners and may take any value:
    pixels outside the image are ``fill_value`` (in output units), never
    clamped. ``output_dtype=tf.float32`` on uint8/uint16 images converts inside
    the op, multiplying by ``scale`` (e.g. 1/255), so no float copy of the
    whole image is ever made. Differentiable with respect to float images
    (overlapping patches accumulate); offsets get no gradient. Bad shapes raise
    ``tf.errors.InvalidArgumentError`` (``ValueError`` when a graph already
    knows them statically); outputs over ``max_output_bytes`` are refused.
    """
    ops = load_op_library()
    with tf.name_scope(name or "extract_patches"):
        images = tf.convert_to_tensor(images)
        offsets = tf.convert_to_tensor(offsets)
        if offsets.dtype != tf.int32:
            offsets = tf.cast(offsets, tf.int32)
        out_dtype = _output_dtype(images.dtype, output_dtype)
        size = _patch_size(patch_size, images, offsets)
        attrs = {
            "fill_value": float(fill_value),
            "scale": float(scale),
            "max_output_bytes": int(max_output_bytes),
        }
        if not images.dtype.is_floating:
            return ops.ats_extract_patches(images, offsets, size, out_type=out_dtype, **attrs)

        @tf.custom_gradient
        def differentiable(images, offsets):
            def grad(upstream):
                image_shape = tf.shape(images, out_type=tf.int32)
                return _scatter(ops, upstream, offsets, image_shape, size, attrs["scale"]), None

            return ops.ats_extract_patches(images, offsets, size, out_type=out_dtype, **attrs), grad

        return differentiable(images, offsets)
