"""A tiny attention-sampling model learns with ``fit``.

Each 32x32 image is noise plus one 4x4 mark at a random place: a vertical
bar (class 0) or a horizontal bar (class 1). In the 8x8 low view both marks
are the same grey dot, and 4 patches of 8x8 cover a quarter of the image, so
the classifier can only become reliable by sampling patches on or next to
the dot: the loss can go down only if the features and the attention both
learn.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model_ops.core import attention_sampling
from model_ops.data import FromTensors
from model_ops.layers import L2Normalize, SampleSoftmax
from model_ops.regularizers import multinomial_entropy

SIZE, SCALE, MARK = 32, 4, 4


def synthetic(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.1, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = rng.integers(0, 2, n)
    spots = rng.integers(0, SIZE // MARK, (n, 2)) * MARK
    for image, label, (r, c) in zip(x, y, spots, strict=True):
        if label == 0:
            image[r : r + MARK, c + 1 : c + 3] = 1.0
        else:
            image[r + 1 : r + 3, c : c + MARK] = 1.0
    x_low = x.reshape(n, SIZE // SCALE, SCALE, SIZE // SCALE, SCALE, 1).mean(axis=(2, 4))
    return x_low, x, y, spots // MARK


def build(replace: bool):
    attention = keras.Sequential(
        [
            keras.Input((SIZE // SCALE, SIZE // SCALE, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="tanh"),
            keras.layers.Conv2D(1, 3, padding="same"),
            SampleSoftmax(squeeze_channels=True, smooth=1e-4),
        ]
    )
    feature = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalMaxPooling2D(),
            L2Normalize(),
        ]
    )
    x_low = keras.Input((SIZE // SCALE, SIZE // SCALE, 1))
    x_high = keras.Input((SIZE, SIZE, 1))
    features, attention_map, _ = attention_sampling(
        attention, feature, n_patches=4, replace=replace, attention_regularizer=multinomial_entropy(1e-4)
    )([x_low, x_high])
    y = keras.layers.Dense(2, activation="softmax")(features)
    model = keras.Model([x_low, x_high], y)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, keras.Model([x_low, x_high], attention_map)


def mass_near_marks(attention_model, x_low, x_high, cells) -> float:
    """Mean attention on the mark's cell and its 8 neighbours (9/64 if uniform)."""
    maps = attention_model.predict([x_low, x_high], verbose=0)
    return float(
        np.mean(
            [
                m[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].sum()
                for m, (r, c) in zip(maps, cells, strict=True)
            ]
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("replace", [False, True])
def test_tiny_model_loss_goes_down_and_attention_finds_the_marks(replace):
    keras.utils.set_random_seed(1)
    x_low, x_high, y, cells = synthetic(512, seed=0)
    model, attention_model = build(replace)
    assert mass_near_marks(attention_model, x_low, x_high, cells) < 0.3
    history = model.fit(FromTensors([x_low, x_high], y, batch_size=32, seed=0), epochs=10, verbose=0)
    loss = history.history["loss"]
    assert loss[-1] < 0.3 * loss[0], loss
    assert history.history["accuracy"][-1] > 0.9
    assert mass_near_marks(attention_model, x_low, x_high, cells) > 0.6
