"""Attention stage: the distribution over low-resolution cells."""

from __future__ import annotations

import tensorflow as tf

from service.models.servable import ServableModel


def attention_map(model: ServableModel, x_low: tf.Tensor) -> tf.Tensor:
    """float32 (1, Sh, Sw), summing to 1."""
    return model.attention(x_low)
