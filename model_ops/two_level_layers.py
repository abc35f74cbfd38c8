"""Keras layers of two-level attention sampling and ``attention_sampling_two_level``.

For images held in memory (training on canvases that fit): the layers cut
regions and patches from ``x_high`` with the patch op, like
:class:`~model_ops.layers.SamplePatches`. Images too large for memory go
through :func:`model_ops.two_level_pipeline.run_two_level` instead, which
reads the same pixels stage by stage. No layer holds weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from model_ops import geometry
from model_ops.core import infer_patch_size
from model_ops.layers import ActivityRegularizer, TotalReshape, _serializable
from model_ops.patch_ops import extract_patches
from model_ops.sampling import MODES, Mode, sample_positions
from model_ops.two_level import aggregate_two_level, region_views, sample_patches_in_regions


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _squeeze_to(attention: tf.Tensor, rank: int) -> tf.Tensor:
    """Drop a trailing size-1 channel axis if the map has one more axis than ``rank``."""
    return tf.squeeze(attention, -1) if attention.shape.rank == rank + 1 else attention


@_serializable
class SampleRegions(keras.layers.Layer):
    """Draw regions from the coarse map and cut their views.

    Called on ``[x_coarse, x_high, coarse_map]`` (``coarse_map`` ``(B, Sh,
    Sw)``, over ``x_coarse``, a view of the whole of ``x_high``); returns
    ``[views (B, K, *view_size, C), region_probs (B, K), region_offsets (B, K,
    2)]``, offsets being level-0 top-left corners of ``region_size`` boxes
    (see :mod:`model_ops.geometry`). ``view_dtype="float32"`` with
    ``view_scale`` converts the (uint8) views for the fine attention network.
    """

    def __init__(
        self,
        n_regions: int,
        region_size: Sequence[int],
        view_size: Sequence[int],
        receptive_field: int = 0,
        replace: bool = False,
        mode: Mode = "sample",
        seed: int | None = None,
        view_dtype: str | None = None,
        view_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_mode(mode)
        self.n_regions = int(n_regions)
        self.region_size = tuple(int(s) for s in region_size)
        self.view_size = tuple(int(s) for s in view_size)
        self.receptive_field = receptive_field
        self.replace, self.mode, self.seed = bool(replace), mode, seed
        self.view_dtype, self.view_scale = view_dtype, view_scale
        self.supports_jit = False  # the patch op has no XLA kernel

    def call(self, inputs):
        x_coarse, x_high, coarse_map = inputs
        coarse_map = _squeeze_to(coarse_map, 3)
        cells, probs = sample_positions(coarse_map, self.n_regions, self.replace, self.mode, self.seed)
        offsets = geometry.region_offsets(
            cells,
            tf.shape(x_coarse)[1:-1],
            tf.shape(x_high)[1:-1],
            tf.shape(coarse_map)[1:],
            self.region_size,
            self.receptive_field,
        )
        views = region_views(x_high, offsets, self.region_size, self.view_size)
        if self.view_dtype is not None:
            views = tf.cast(views, self.view_dtype) * self.view_scale
        return [views, probs, offsets]

    def get_config(self):
        return {
            **super().get_config(),
            "n_regions": self.n_regions,
            "region_size": list(self.region_size),
            "view_size": list(self.view_size),
            "receptive_field": self.receptive_field,
            "replace": self.replace,
            "mode": self.mode,
            "seed": self.seed,
            "view_dtype": self.view_dtype,
            "view_scale": self.view_scale,
        }


@_serializable
class SamplePatchesInRegions(keras.layers.Layer):
    """Draw patches from each region's fine map and cut them at full resolution.

    Called on ``[x_high, views, region_offsets, fine_maps]`` (``fine_maps``
    ``(B, K, Fh, Fw)``, one per region view); returns ``[patches (B, K, N,
    *patch_size, C), patch_probs (B, K, N), patch_offsets (B, K, N, 2)]``.
    ``seed`` should be the one :class:`SampleRegions` drew with: each region
    draws with a seed derived from it and its slot.
    """

    def __init__(
        self,
        n_patches: int,
        patch_size: Sequence[int],
        region_size: Sequence[int],
        receptive_field: int = 0,
        replace: bool = False,
        mode: Mode = "sample",
        seed: int | None = None,
        patch_dtype: str | None = None,
        patch_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_mode(mode)
        self.n_patches = int(n_patches)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.region_size = tuple(int(s) for s in region_size)
        self.receptive_field = receptive_field
        self.replace, self.mode, self.seed = bool(replace), mode, seed
        self.patch_dtype, self.patch_scale = patch_dtype, patch_scale
        self.supports_jit = False

    def call(self, inputs):
        x_high, views, regions, fine_maps = inputs
        fine_maps = _squeeze_to(fine_maps, 4)
        cells, probs = sample_patches_in_regions(
            fine_maps, self.n_patches, self.replace, self.mode, self.seed
        )
        offsets = geometry.patch_offsets(
            regions,
            cells,
            tf.shape(views)[2:4],
            self.region_size,
            tf.shape(fine_maps)[2:],
            self.patch_size,
            self.receptive_field,
        )
        batch = tf.shape(offsets)[0]
        patches = extract_patches(
            x_high,
            tf.reshape(offsets, [batch, -1, 2]),
            self.patch_size,
            output_dtype=self.patch_dtype,
            scale=self.patch_scale,
        )
        shape = tf.concat([tf.shape(offsets)[:3], tf.shape(patches)[2:]], 0)
        return [tf.reshape(patches, shape), probs, offsets]

    def get_config(self):
        return {
            **super().get_config(),
            "n_patches": self.n_patches,
            "patch_size": list(self.patch_size),
            "region_size": list(self.region_size),
            "receptive_field": self.receptive_field,
            "replace": self.replace,
            "mode": self.mode,
            "seed": self.seed,
            "patch_dtype": self.patch_dtype,
            "patch_scale": self.patch_scale,
        }


@_serializable
class TwoLevelExpectation(keras.layers.Layer):
    """The unbiased two-level estimate of ``Σ_r a(r) Σ_p b(p | r) f(p)``.

    Called on ``[features (B, K, N, ...), region_probs (B, K), patch_probs (B,
    K, N)]``, returns ``(B, ...)``. The flags must match the sampling at each
    level (see :mod:`model_ops.two_level`).
    """

    def __init__(self, replace_regions: bool = False, replace_patches: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.replace_regions, self.replace_patches = bool(replace_regions), bool(replace_patches)

    def call(self, inputs):
        features, region_probs, patch_probs = inputs
        return aggregate_two_level(
            features, region_probs, patch_probs, self.replace_regions, self.replace_patches
        )

    def compute_output_shape(self, inputs_shape):
        features_shape = inputs_shape[0]
        return (features_shape[0], *features_shape[3:])

    def get_config(self):
        return {
            **super().get_config(),
            "replace_regions": self.replace_regions,
            "replace_patches": self.replace_patches,
        }


def attention_sampling_two_level(
    coarse_attention: Callable,
    fine_attention: Callable,
    feature: Callable,
    region_size: Sequence[int],
    view_size: Sequence[int],
    patch_size: Sequence[int] | None = None,
    n_regions: int = 4,
    n_patches: int = 4,
    replace_regions: bool = False,
    replace_patches: bool = False,
    coarse_regularizer: Callable | None = None,
    fine_regularizer: Callable | None = None,
    coarse_receptive_field: int = 0,
    fine_receptive_field: int = 0,
    *,
    seed: int | None = None,
    mode: Mode = "sample",
    patch_dtype: str | None = None,
    patch_scale: float = 1.0,
) -> Callable:
    """Build two-level attention sampling around two attention networks and a feature network.

    Returns a callable ``[x_coarse, x_high] -> [features (B, D), coarse_map,
    fine_maps (B, K, ...), patches (B, K, N, *patch_size, C)]``.
    ``coarse_attention(x_coarse)`` gives one distribution per image over the
    coarse view; ``n_regions`` regions of ``region_size`` level-0 pixels are
    drawn from it and resampled to ``view_size``; ``fine_attention`` gives one
    distribution per region view, from which ``n_patches`` patches are drawn;
    ``feature`` turns each patch into a vector and the unbiased two-level
    estimator combines them. ``patch_dtype``/``patch_scale`` convert uint8
    ``x_high`` for both the region views and the patches; the rest as
    :func:`model_ops.attention_sampling`. Calling it again with the same
    networks shares their weights (e.g. a top-k model for inference).
    """
    patch_size = tuple(patch_size) if patch_size is not None else infer_patch_size(feature)
    view_size = tuple(int(s) for s in view_size)

    def regularized(regularizer, attention_map):
        return attention_map if regularizer is None else ActivityRegularizer(regularizer)(attention_map)

    def apply(x):
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            raise ValueError("attention_sampling_two_level expects [x_coarse, x_high]")
        x_coarse, x_high = x
        coarse_map = regularized(coarse_regularizer, coarse_attention(x_coarse))
        views, region_probs, regions = SampleRegions(
            n_regions,
            region_size,
            view_size,
            coarse_receptive_field,
            replace_regions,
            mode=mode,
            seed=seed,
            view_dtype=patch_dtype,
            view_scale=patch_scale,
        )([x_coarse, x_high, coarse_map])
        channels = views.shape[-1]
        fine_maps = fine_attention(TotalReshape((-1, *view_size, channels))(views))
        fine_maps = regularized(fine_regularizer, fine_maps)
        fine_maps = TotalReshape((-1, n_regions, *fine_maps.shape[1:]))(fine_maps)
        patches, patch_probs, _ = SamplePatchesInRegions(
            n_patches,
            patch_size,
            region_size,
            fine_receptive_field,
            replace_patches,
            mode=mode,
            seed=seed,
            patch_dtype=patch_dtype,
            patch_scale=patch_scale,
        )([x_high, views, regions, fine_maps])
        flat = TotalReshape((-1, *patch_size, channels))(patches)
        patch_features = feature(flat)
        patch_features = TotalReshape((-1, n_regions, n_patches, *patch_features.shape[1:]))(patch_features)
        features = TwoLevelExpectation(replace_regions, replace_patches)(
            [patch_features, region_probs, patch_probs]
        )
        return [features, coarse_map, fine_maps, patches]

    return apply
