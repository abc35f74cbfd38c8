"""Feature stage: one vector per patch."""

from __future__ import annotations

import tensorflow as tf

from service.models.servable import ServableModel


def patch_features(model: ServableModel, patches: tf.Tensor) -> tf.Tensor:
    """uint8 (1, N, ph, pw, C) -> float32 (1, N, D)."""
    n = tf.shape(patches)[1]
    flat = tf.reshape(patches, tf.concat([[-1], tf.shape(patches)[2:]], axis=0))
    return tf.reshape(model.features(flat), [1, n, -1])
