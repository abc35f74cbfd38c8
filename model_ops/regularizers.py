"""Regularizers for attention distributions."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ats")
class MultinomialEntropy(keras.regularizers.Regularizer):
    """``strength * Σ a log(a + eps) / B``: the negative entropy of the maps.

    Added to the loss, a positive ``strength`` raises the entropy of the
    attention (spreads it, so sampling keeps exploring); a negative one
    sharpens it. The batch mean is taken here, so apply it with
    :class:`model_ops.layers.ActivityRegularizer` (Keras' own
    ``activity_regularizer=`` would divide by the batch size a second time).
    """

    def __init__(self, strength: float = 1.0, eps: float = 1e-6):
        self.strength = float(strength)
        self.eps = float(eps)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        batch = tf.cast(tf.shape(x)[0], x.dtype)
        return self.strength * tf.reduce_sum(x * tf.math.log(x + self.eps)) / batch

    def get_config(self) -> dict:
        return {"strength": self.strength, "eps": self.eps}


def multinomial_entropy(strength: float = 1.0, eps: float = 1e-6) -> MultinomialEntropy:
    """The entropy regularizer of the original library (see :class:`MultinomialEntropy`)."""
    return MultinomialEntropy(strength, eps)
