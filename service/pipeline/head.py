"""Head stage: class probabilities from the aggregated features."""

from __future__ import annotations

import tensorflow as tf

from service.models.servable import ServableModel


def classify(model: ServableModel, features: tf.Tensor) -> tf.Tensor:
    """(1, D) -> (1, K) probabilities."""
    return model.head(features)
