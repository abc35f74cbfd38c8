"""Keras 3 layers of attention sampling and the original library's utility layers.

The sampling layers (:class:`SampleSoftmax`, :class:`SamplePatches`,
:class:`Expectation`) hold no weights. Raw TensorFlow ops cannot take Keras'
symbolic tensors, hence a layer around each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from model_ops.expectation import aggregate
from model_ops.geometry import cells_to_offsets
from model_ops.patch_ops import extract_patches
from model_ops.sampling import MODES, Mode, sample_positions


def _serializable(cls):
    return keras.saving.register_keras_serializable(package="ats")(cls)


@_serializable
class SampleSoftmax(keras.layers.Layer):
    """Softmax over every non-batch element of a sample (channels included).

    With ``0 < smooth < 1`` the distribution becomes ``a (1 - smooth) +
    smooth / numel``, so no cell has zero mass; ``squeeze_channels`` drops the
    (size-1) channel axis, giving the ``(B, S1..Sn)`` map the sampler expects.
    """

    def __init__(self, squeeze_channels: bool = False, smooth: float = 0, **kwargs):
        super().__init__(**kwargs)
        self.squeeze_channels = squeeze_channels
        self.smooth = smooth

    def call(self, x):
        shape = tf.shape(x)
        a = tf.nn.softmax(tf.reshape(x, [shape[0], -1]))
        if 0 < self.smooth < 1:
            a = a * (1 - self.smooth) + self.smooth / tf.cast(tf.shape(a)[1], a.dtype)
        a = tf.reshape(a, shape)
        return tf.squeeze(a, -1) if self.squeeze_channels else a

    def compute_output_shape(self, x_shape):
        return tuple(x_shape[:-1]) if self.squeeze_channels else tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "squeeze_channels": self.squeeze_channels, "smooth": self.smooth}


@_serializable
class SamplePatches(keras.layers.Layer):
    """Draw cells from an attention map and cut the matching full-resolution patches.

    Called on ``[x_low, x_high, attention]`` with ``x_low`` ``(B, l1..ln, C)``,
    ``x_high`` ``(B, h1..hn, C)`` and ``attention`` ``(B, S1..Sn)`` (a trailing
    size-1 channel axis is accepted); returns ``[patches (B, N, *patch_size,
    C), sampled_attention (B, N)]``. ``mode="top_k"`` takes the most attended
    cells deterministically; ``seed`` makes draws reproducible (see
    :mod:`model_ops.sampling`). ``patch_dtype="float32"`` with ``patch_scale``
    converts uint8/uint16 pixels inside the patch op, so a uint8 image is
    never converted as a whole. Only ``attention`` receives a gradient (and
    float ``x_high``).
    """

    def __init__(
        self,
        n_patches: int,
        patch_size: Sequence[int],
        receptive_field: int = 0,
        replace: bool = False,
        mode: Mode = "sample",
        seed: int | None = None,
        patch_dtype: str | None = None,
        patch_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.n_patches = int(n_patches)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.receptive_field = receptive_field
        self.replace = bool(replace)
        self.mode = mode
        self.seed = seed
        self.patch_dtype = patch_dtype
        self.patch_scale = patch_scale
        self.supports_jit = False  # the patch op has no XLA kernel

    def call(self, inputs):
        x_low, x_high, attention = inputs
        spatial = len(self.patch_size)
        if attention.shape.rank == spatial + 2:
            attention = tf.squeeze(attention, -1)
        cells, probs = sample_positions(attention, self.n_patches, self.replace, self.mode, self.seed)
        offsets = cells_to_offsets(
            cells,
            tf.shape(x_low)[1:-1],
            tf.shape(x_high)[1:-1],
            tf.shape(attention)[1:],
            self.patch_size,
            self.receptive_field,
        )
        patches = extract_patches(
            x_high, offsets, self.patch_size, output_dtype=self.patch_dtype, scale=self.patch_scale
        )
        return [patches, probs]

    def get_config(self):
        return {
            **super().get_config(),
            "n_patches": self.n_patches,
            "patch_size": list(self.patch_size),
            "receptive_field": self.receptive_field,
            "replace": self.replace,
            "mode": self.mode,
            "seed": self.seed,
            "patch_dtype": self.patch_dtype,
            "patch_scale": self.patch_scale,
        }


@_serializable
class Expectation(keras.layers.Layer):
    """The unbiased estimate of ``Σ a_i f_i`` from ``[features (B, N, ...), sampled_attention (B, N)]``.

    ``replace`` must match the sampling (see :mod:`model_ops.expectation`).
    """

    def __init__(self, replace: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.replace = bool(replace)

    def call(self, inputs):
        features, sampled_attention = inputs
        return aggregate(features, sampled_attention, self.replace)

    def compute_output_shape(self, inputs_shape):
        features_shape = inputs_shape[0]
        return (features_shape[0], *features_shape[2:])

    def get_config(self):
        return {**super().get_config(), "replace": self.replace}


@_serializable
class ActivityRegularizer(keras.layers.Layer):
    """Identity that adds ``regularizer(x)`` to the model's losses (as is, no batch division)."""

    def __init__(self, regularizer, **kwargs):
        super().__init__(**kwargs)
        self.regularizer = keras.regularizers.get(regularizer)

    def call(self, x):
        self.add_loss(self.regularizer(x))
        return x

    def compute_output_shape(self, x_shape):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "regularizer": keras.regularizers.serialize(self.regularizer)}


@_serializable
class L2Normalize(keras.layers.Layer):
    """Scale ``axis`` to unit L2 norm (feature vectors of patches)."""

    def __init__(self, axis: int | Sequence[int] = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, x):
        return tf.math.l2_normalize(x, axis=self.axis)

    def compute_output_shape(self, x_shape):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


@_serializable
class ResizeImages(keras.layers.Layer):
    """Resize ``(B, H, W, C)`` images to ``size`` (bilinear, bicubic, area or nearest)."""

    METHODS = ("bilinear", "bicubic", "area", "nearest")

    def __init__(self, size: Sequence[int], mode: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.METHODS:
            raise ValueError(f"Unsupported resize mode {mode!r}, use one of {self.METHODS}")
        self.size = tuple(int(s) for s in size)
        self.mode = mode

    def call(self, x):
        return tf.cast(tf.image.resize(x, self.size, method=self.mode), self.compute_dtype)

    def compute_output_shape(self, x_shape):
        return (x_shape[0], *self.size, x_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "mode": self.mode}


@_serializable
class TotalReshape(keras.layers.Layer):
    """Reshape including the batch axis (e.g. ``(B, N, h, w, C) -> (B*N, h, w, C)``)."""

    def __init__(self, shape: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(s) for s in shape)

    def call(self, x):
        return tf.reshape(x, self.target_shape)

    def compute_output_shape(self, x_shape):
        return tuple(s if s > 0 else None for s in self.target_shape)

    def get_config(self):
        return {**super().get_config(), "shape": list(self.target_shape)}


def _applied(p: float, batch: tf.Tensor) -> tf.Tensor:
    """Per-image 0/1 mask: 1 with probability ``p``."""
    return tf.cast(tf.random.uniform([batch]) < p, tf.float32)


@_serializable
class ImageLinearTransform(keras.layers.Layer):
    """Training-time augmentation ``a x + b`` (contrast ``a``, brightness ``b``).

    ``a`` and ``b`` are drawn uniformly per image from the given ranges, and
    only for a fraction ``p`` of the images; identity at inference.
    """

    def __init__(
        self, a: Sequence[float] = (0.8, 1.2), b: Sequence[float] = (-0.1, 0.1), p: float = 0.8, **kwargs
    ):
        super().__init__(**kwargs)
        self.a, self.b, self.p = tuple(a), tuple(b), p

    def call(self, x, training=None):
        if not training:
            return x
        batch = tf.shape(x)[0]
        mask = _applied(self.p, batch)
        a = 1 + mask * (tf.random.uniform([batch], *self.a) - 1)
        b = mask * tf.random.uniform([batch], *self.b)
        shape = tf.concat([[batch], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
        return tf.reshape(tf.cast(a, x.dtype), shape) * x + tf.reshape(tf.cast(b, x.dtype), shape)

    def compute_output_shape(self, x_shape):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "a": list(self.a), "b": list(self.b), "p": self.p}


@_serializable
class ImagePan(keras.layers.Layer):
    """Training-time augmentation: shift ``(B, H, W, C)`` images by up to ``pixels``.

    Shifts are drawn uniformly in ``[-pixels, pixels]`` per image along the
    enabled axes, for a fraction ``p`` of the images; uncovered pixels are 0.
    Identity at inference.
    """

    def __init__(
        self,
        pixels: int = 100,
        p: float = 0.8,
        horizontally: bool = True,
        vertically: bool = False,
        mode: str = "nearest",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode.lower() not in ("nearest", "bilinear"):
            raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.pixels, self.p = pixels, p
        self.horizontally, self.vertically = horizontally, vertically
        self.mode = mode.lower()

    def call(self, x, training=None):
        if not training:
            return x
        batch = tf.shape(x)[0]
        shift = tf.random.uniform([batch, 2], -self.pixels, self.pixels)
        axes = tf.constant([[float(self.horizontally), float(self.vertically)]])
        shift = shift * axes * _applied(self.p, batch)[:, None]
        ones, zeros = tf.ones([batch]), tf.zeros([batch])
        # output (x, y) reads input (x - dx, y - dy)
        transform = tf.stack([ones, zeros, -shift[:, 0], zeros, ones, -shift[:, 1], zeros, zeros], axis=1)
        moved = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(x, tf.float32),
            transforms=transform,
            output_shape=tf.shape(x)[1:3],
            fill_value=0.0,
            interpolation=self.mode.upper(),
            fill_mode="CONSTANT",
        )
        return tf.cast(moved, x.dtype)

    def compute_output_shape(self, x_shape):
        return tuple(x_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "pixels": self.pixels,
            "p": self.p,
            "horizontally": self.horizontally,
            "vertically": self.vertically,
            "mode": self.mode,
        }
