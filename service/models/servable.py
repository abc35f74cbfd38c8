"""A loaded model version: its metadata and its stage signatures (three for a
one-level model; four for a two-level one, whose attention is split into a
coarse and a fine network).

The server runs the stages one by one (rather than the all-in-one
``predict_image`` signature) so that each is timed and a cancelled request
stops between them.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import tensorflow as tf

from model_ops.export import ModelMetadata, load_model

SIGNATURES = ("attention", "features", "head")
TWO_LEVEL_SIGNATURES = ("coarse_attention", "fine_attention", "features", "head")


@dataclasses.dataclass(frozen=True, eq=False)  # identity: one object per loaded version
class ServableModel:
    spec: ModelMetadata
    version: int
    path: pathlib.Path
    saved_model: Any  # the loaded SavedModel (TensorFlow has no type information)

    @property
    def name(self) -> str:
        return self.spec.name

    def attention(self, x_low: tf.Tensor) -> tf.Tensor:
        """uint8 (1, h, w, C) -> float32 (1, Sh, Sw) summing to 1."""
        return self.saved_model.signatures["attention"](x_low=x_low)["attention"]

    def coarse_attention(self, x_coarse: tf.Tensor) -> tf.Tensor:
        """Two-level: uint8 (1, h, w, C) coarse view -> float32 (1, Sh, Sw) summing to 1."""
        return self.saved_model.signatures["coarse_attention"](x_coarse=x_coarse)["attention"]

    def fine_attention(self, views: tf.Tensor) -> tf.Tensor:
        """Two-level: uint8 (K, vh, vw, C) region views -> float32 (K, Fh, Fw), each summing to 1."""
        return self.saved_model.signatures["fine_attention"](region_views=views)["attention"]

    def features(self, patches: tf.Tensor) -> tf.Tensor:
        """uint8 (M, ph, pw, C) -> float32 (M, D)."""
        return self.saved_model.signatures["features"](patches=patches)["features"]

    def head(self, features: tf.Tensor) -> tf.Tensor:
        """float32 (B, D) -> class probabilities (B, K)."""
        return self.saved_model.signatures["head"](features=features)["probabilities"]


def check_servable(metadata: ModelMetadata) -> None:
    """Raise ValueError if the server cannot feed or bound this model (beyond
    what ``model_ops.export`` checks of every exported version)."""
    if metadata.input_dtype != "uint8" or metadata.channels not in (1, 3):
        raise ValueError(
            f"model {metadata.name!r}: the server takes uint8 images of 1 or 3 channels, "
            f"not {metadata.input_dtype} x {metadata.channels}"
        )
    if len(metadata.patch_size) != 2 or not 1 <= metadata.n_patches <= metadata.max_patches:
        raise ValueError(f"model {metadata.name!r}: inconsistent patch_size/n_patches/max_patches")
    two_level = metadata.two_level
    if two_level is not None and (
        len(two_level.region_size) != 2 or not 1 <= two_level.n_regions <= two_level.max_regions
    ):
        raise ValueError(f"model {metadata.name!r}: inconsistent region_size/n_regions/max_regions")


def check_signatures(metadata: ModelMetadata, saved_model: Any) -> None:
    """Raise ValueError unless the SavedModel has every stage the server runs for its kind of model."""
    needed = SIGNATURES if metadata.two_level is None else TWO_LEVEL_SIGNATURES
    missing = [name for name in needed if name not in saved_model.signatures]
    if missing:
        raise ValueError(f"model {metadata.name!r}: the SavedModel lacks the signatures {missing}")


def load_servable(name: str, version: int, path: pathlib.Path) -> ServableModel:
    """Load one version directory (versions checked, patch-op library loaded
    first: the SavedModel's graphs reference the op)."""
    saved_model, metadata = load_model(path)
    check_servable(metadata)
    check_signatures(metadata, saved_model)
    if metadata.name != name:
        raise ValueError(f"{path}: ats_model.json names model {metadata.name!r}, its directory {name!r}")
    return ServableModel(spec=metadata, version=version, path=path, saved_model=saved_model)
