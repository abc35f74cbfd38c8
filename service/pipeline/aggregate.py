"""Aggregation stage: the estimator's forward value over the N patch features."""

from __future__ import annotations

import tensorflow as tf

from model_ops.expectation import aggregate as expectation
from model_ops.export import ModelMetadata


def aggregate(features: tf.Tensor, probabilities: tf.Tensor, spec: ModelMetadata) -> tf.Tensor:
    """float32 (1, N, D) features and (1, N) cell probabilities -> (1, D)."""
    return _estimate(features, probabilities, spec.replace)


@tf.function(reduce_retracing=True)
def _estimate(features: tf.Tensor, probabilities: tf.Tensor, replace: bool) -> tf.Tensor:
    """As one graph: its dozen small ops cost ~6x more run one by one in eager mode."""
    return expectation(features, probabilities, replace)
