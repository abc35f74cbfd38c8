"""The reference Megapixel-MNIST networks, and the full-image CNN they are compared with.

All networks take float32 pixels in [0, 1]; the uint8 -> float conversion
happens where the pixels are read (the patch op converts while cutting, the
exported signatures convert their uint8 inputs), never on a whole megapixel
image.
"""

from __future__ import annotations

import keras
from keras import layers

N_CLASSES = 10
PATCH_SIZE = (50, 50)
FEATURE_DIM = 32


def build_attention_net(low_shape: tuple[int, int] = (180, 180), channels: int = 1) -> keras.Model:
    """Low-resolution view -> attention logits ``(B, h, w, 1)``: three 3x3 convs (8, 8, 1).

    ``same`` padding keeps the map the size of the view, so the receptive
    field in the cell-to-offset formula is 0. The softmax over all cells
    (``SampleSoftmax``) is applied by the caller.
    """
    x_low = keras.Input((*low_shape, channels), name="x_low")
    x = layers.Conv2D(8, 3, padding="same", activation="tanh", name="att_conv1")(x_low)
    x = layers.Conv2D(8, 3, padding="same", activation="tanh", name="att_conv2")(x)
    logits = layers.Conv2D(1, 3, padding="same", name="att_logits")(x)
    return keras.Model(x_low, logits, name="attention_logits")


def build_feature_net(patch_size: tuple[int, int] = PATCH_SIZE, channels: int = 1) -> keras.Model:
    """Patch -> unit-norm feature ``(B, 32)``: conv 7x7 then three 3x3 convs, valid, global max pool."""
    patch = keras.Input((*patch_size, channels), name="patch")
    x = layers.Conv2D(FEATURE_DIM, 7, activation="relu", name="feat_conv1")(patch)
    for i in range(2, 5):
        x = layers.Conv2D(FEATURE_DIM, 3, activation="relu", name=f"feat_conv{i}")(x)
    x = layers.GlobalMaxPooling2D(name="feat_pool")(x)
    features = layers.UnitNormalization(name="feat_l2")(x)
    return keras.Model(patch, features, name="features")


def build_head(feature_dim: int = FEATURE_DIM, n_classes: int = N_CLASSES) -> keras.Model:
    """Aggregated feature -> class probabilities (one dense softmax layer)."""
    features = keras.Input((feature_dim,), name="features")
    probs = layers.Dense(n_classes, activation="softmax", name="head_dense")(features)
    return keras.Model(features, probs, name="head")


BASELINE_STRIDES = (2, 1, 1, 1)


def build_full_image_cnn(
    image_shape: tuple[int, int] = (1500, 1500),
    channels: int = 1,
    n_classes: int = N_CLASSES,
    strides: tuple[int, int, int, int] = BASELINE_STRIDES,
) -> keras.Model:
    """The comparison: a plain strided CNN of the feature network's depth over the whole image.

    Same layers as the feature network (7x7 then three 3x3 convs, 32
    channels, global max pool, L2 normalise, dense softmax) and a stride-2
    stem (``BASELINE_STRIDES``): the digits keep 14 px, enough to read them,
    as the feature network reads them at full resolution.
    """
    image = keras.Input((*image_shape, channels), name="image")
    x = image
    for i, (kernel, stride) in enumerate(zip((7, 3, 3, 3), strides, strict=True), start=1):
        x = layers.Conv2D(FEATURE_DIM, kernel, strides=stride, activation="relu", name=f"cnn_conv{i}")(x)
    x = layers.GlobalMaxPooling2D(name="cnn_pool")(x)
    x = layers.UnitNormalization(name="cnn_l2")(x)
    probs = layers.Dense(n_classes, activation="softmax", name="cnn_dense")(x)
    return keras.Model(image, probs, name="full_image_cnn")
