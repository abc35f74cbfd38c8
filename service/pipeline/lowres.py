"""Low-resolution stage: the small view the attention network looks at."""

from __future__ import annotations

import tensorflow as tf

from model_ops.export import ModelMetadata
from service.errors import InvalidInput
from service.pipeline.sources import ImageSource


def low_view(source: ImageSource, spec: ModelMetadata) -> tf.Tensor:
    """uint8 (1, h, w, C) view at the model's scale."""
    return source.low_view(low_shape(source, spec))


def low_shape(source: ImageSource, spec: ModelMetadata) -> tuple[int, int]:
    """Size of the view at the model's scale; refuses images too small for
    the attention network to see anything."""
    height, width, _ = source.shape
    size = spec.low_shape(height, width)
    if min(size) <= spec.receptive_field:
        raise InvalidInput(
            f"image of {width}x{height} is too small for this model: its "
            f"low-resolution view would be {size[1]}x{size[0]}, the attention "
            f"network needs more than {spec.receptive_field} pixels per side",
            field="image",
        )
    return size
