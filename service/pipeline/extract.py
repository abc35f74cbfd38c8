"""Extraction stage: cut the chosen full-resolution patches out of the source."""

from __future__ import annotations

import tensorflow as tf

from model_ops.export import ModelMetadata
from service.pipeline.sources import ImageSource


def extract(source: ImageSource, offsets: tf.Tensor, spec: ModelMetadata) -> tf.Tensor:
    """uint8 (1, N, ph, pw, C)."""
    height, width = spec.patch_size
    return source.patches(offsets, (height, width))
