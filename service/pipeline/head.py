"""Head stage: class probabilities from the aggregated features."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from service.pipeline.model import ServableModel


def classify(model: ServableModel, features: tf.Tensor) -> np.ndarray:
    """(1, D) -> (K,) probabilities."""
    return model.head(features).numpy()[0]
