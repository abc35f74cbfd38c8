"""Aggregation stage: the estimator's forward value over the N patch features."""
from __future__ import annotations

import tensorflow as tf

from model_ops.expectation import aggregate as expectation
from service.pipeline.spec import ModelSpec


def aggregate(features: tf.Tensor, probabilities: tf.Tensor, spec: ModelSpec) -> tf.Tensor:
    """float32 (1, N, D) features and (1, N) cell probabilities -> (1, D)."""
    return expectation(features, probabilities, spec.replace)
