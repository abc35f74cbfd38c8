"""Two-level attention sampling, stage by stage, over an image that is never loaded whole.

:func:`run_two_level` reads the coarse view of a
:class:`~model_ops.data.MultiResolutionImage`, runs the coarse attention,
draws ``K`` regions, reads their views, runs the fine attention, draws ``N``
patches per region, reads them at full resolution, and combines their
features with the unbiased two-level estimator. The stages are any object
with the four methods of :class:`TwoLevelStages`: the Keras networks in
process (:class:`TwoLevelNetworks`, also what the export serves, and what a
training step calls under a ``tf.GradientTape``, one image at a time) or a
loaded SavedModel (:class:`SavedModelStages`), so that training, export tests
and a server run the same steps.

Region views are ``low_resolution_view`` of the level-0 region (zeros
outside the image). An image class may define ``region_views(offsets,
region_size, view_size) -> (K, vh, vw, C)`` uint8 to read them faster, e.g.
from the pyramid level nearest the fine scale; otherwise they are cut at
level 0 with ``read_patches`` and resampled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from model_ops import geometry
from model_ops.data import MultiResolutionImage
from model_ops.export import ModelMetadata, TwoLevelSpec, _squeeze_channel
from model_ops.lowres import low_resolution_view
from model_ops.sampling import Mode, SeedLike, sample_positions
from model_ops.two_level import aggregate_two_level, sample_patches_in_regions


class TwoLevelStages(Protocol):
    """The four stages of a two-level model; pixels are uint8, as exported."""

    def coarse_attention(self, x_coarse: tf.Tensor) -> tf.Tensor:
        """``(B, h, w, C)`` coarse views -> ``(B, Sh, Sw)`` maps summing to 1."""

    def fine_attention(self, views: tf.Tensor) -> tf.Tensor:
        """``(M, vh, vw, C)`` region views -> ``(M, Fh, Fw)`` maps summing to 1."""

    def features(self, patches: tf.Tensor) -> tf.Tensor:
        """``(M, ph, pw, C)`` patches -> ``(M, D)``."""

    def head(self, features: tf.Tensor) -> tf.Tensor:
        """``(B, D)`` estimates -> ``(B, classes)`` probabilities."""


class TwoLevelNetworks:
    """The stages over four Keras networks that take float pixels times ``pixel_scale``.

    ``training=True`` runs them in training mode (a training step).
    """

    def __init__(
        self,
        coarse_attention: keras.Model,
        fine_attention: keras.Model,
        feature: keras.Model,
        head: keras.Model,
        pixel_scale: float = 1.0 / 255,
        training: bool = False,
    ) -> None:
        self.networks = (coarse_attention, fine_attention, feature, head)
        self.pixel_scale, self.training = pixel_scale, training

    def _run(self, index: int, pixels: tf.Tensor) -> tf.Tensor:
        return self.networks[index](tf.cast(pixels, tf.float32) * self.pixel_scale, training=self.training)

    def coarse_attention(self, x_coarse: tf.Tensor) -> tf.Tensor:
        return _squeeze_channel(self._run(0, x_coarse))

    def fine_attention(self, views: tf.Tensor) -> tf.Tensor:
        return _squeeze_channel(self._run(1, views))

    def features(self, patches: tf.Tensor) -> tf.Tensor:
        return self._run(2, patches)

    def head(self, features: tf.Tensor) -> tf.Tensor:
        return self.networks[3](features, training=self.training)


class SavedModelStages:
    """The stages of an exported two-level version (see :mod:`model_ops.two_level_export`)."""

    def __init__(self, saved_model: Any) -> None:
        self.signatures = saved_model.signatures

    def coarse_attention(self, x_coarse: tf.Tensor) -> tf.Tensor:
        return self.signatures["coarse_attention"](x_coarse=x_coarse)["attention"]

    def fine_attention(self, views: tf.Tensor) -> tf.Tensor:
        return self.signatures["fine_attention"](region_views=views)["attention"]

    def features(self, patches: tf.Tensor) -> tf.Tensor:
        return self.signatures["features"](patches=patches)["features"]

    def head(self, features: tf.Tensor) -> tf.Tensor:
        return self.signatures["head"](features=features)["probabilities"]


@dataclasses.dataclass(frozen=True)
class TwoLevelResult:
    """Everything one image's pass produced; batch axis 1, offsets top-left ``(y, x)`` in level-0 pixels."""

    coarse_attention: tf.Tensor  # (1, Sh, Sw)
    region_cells: tf.Tensor  # (1, K, 2) coarse-map cells
    region_probs: tf.Tensor  # (1, K) their coarse attention
    region_offsets: tf.Tensor  # (1, K, 2) region boxes of region_size
    fine_attention: tf.Tensor  # (1, K, Fh, Fw) one map per chosen region
    patch_cells: tf.Tensor  # (1, K, N, 2) fine-map cells
    patch_probs: tf.Tensor  # (1, K, N) their fine attention within the region
    patch_offsets: tf.Tensor  # (1, K, N, 2) patch boxes of patch_size
    features: tf.Tensor  # (1, K, N, D)
    estimate: tf.Tensor  # (1, D)
    probabilities: tf.Tensor  # (1, classes)


def read_region_views(
    image: MultiResolutionImage, offsets: np.ndarray, region_size: Sequence[int], view_size: Sequence[int]
) -> np.ndarray:
    """The ``(K, vh, vw, C)`` uint8 views of the regions at level-0 ``offsets`` ``(K, 2)``."""
    reader = getattr(image, "region_views", None)
    if reader is not None:
        return reader(offsets, region_size, view_size)
    return low_resolution_view(image.read_patches(offsets, region_size), tuple(view_size)).numpy()


def _count(requested: int | None, default: int, maximum: int, what: str) -> int:
    n = requested or default
    if not 1 <= n <= maximum:
        raise ValueError(f"{what} must be between 1 and {maximum}, got {n}")
    return n


def two_level_spec(metadata: ModelMetadata) -> TwoLevelSpec:
    """The ``two_level`` section, or a ValueError for a one-level model."""
    if metadata.two_level is None:
        raise ValueError(f"model {metadata.name!r} is a one-level model (no 'two_level' metadata)")
    return metadata.two_level


def run_two_level(
    stages: TwoLevelStages,
    image: MultiResolutionImage,
    metadata: ModelMetadata,
    n_regions: int | None = None,
    n_patches: int | None = None,
    mode: Mode = "sample",
    seed: SeedLike = None,
) -> TwoLevelResult:
    """One image through the two levels (``n_regions``/``n_patches`` default to the metadata's).

    Differentiable with respect to the networks behind ``stages`` (the reads
    are data): a training step calls it under a tape and takes a loss of
    ``probabilities``.
    """
    spec = two_level_spec(metadata)
    k = _count(n_regions, spec.n_regions, spec.max_regions, "n_regions")
    n = _count(n_patches, metadata.n_patches, metadata.max_patches, "n_patches")
    height, width, _ = image.shape
    coarse_size = metadata.low_shape(height, width)
    coarse = stages.coarse_attention(image.low_view(coarse_size)[None])
    region_cells, region_probs = sample_positions(coarse, k, spec.replace_regions, mode, seed)
    regions = geometry.region_offsets(
        region_cells,
        coarse_size,
        (height, width),
        tf.shape(coarse)[1:],
        spec.region_size,
        metadata.receptive_field,
    )
    view_size = spec.fine_view_shape()
    views = read_region_views(image, regions[0].numpy(), spec.region_size, view_size)
    fine = stages.fine_attention(views)[None]
    patch_cells, patch_probs = sample_patches_in_regions(fine, n, metadata.replace, mode, seed)
    offsets = geometry.patch_offsets(
        regions,
        patch_cells,
        view_size,
        spec.region_size,
        tf.shape(fine)[2:],
        metadata.patch_size,
        spec.fine_receptive_field,
    )
    patches = image.read_patches(tf.reshape(offsets, [-1, 2]).numpy(), metadata.patch_size)
    features = tf.reshape(stages.features(patches), [1, k, n, -1])
    estimate = aggregate_two_level(
        features, region_probs, patch_probs, spec.replace_regions, metadata.replace
    )
    return TwoLevelResult(
        coarse_attention=coarse,
        region_cells=region_cells,
        region_probs=region_probs,
        region_offsets=regions,
        fine_attention=fine,
        patch_cells=patch_cells,
        patch_probs=patch_probs,
        patch_offsets=offsets,
        features=features,
        estimate=estimate,
        probabilities=stages.head(estimate),
    )
