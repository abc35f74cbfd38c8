"""A loaded model version: its metadata and its three stage signatures.

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


def load_servable(name: str, version: int, path: pathlib.Path) -> ServableModel:
    """Load one version directory (versions checked, patch-op library loaded
    first: the SavedModel's graphs reference the op)."""
    saved_model, metadata = load_model(path)
    check_servable(metadata)
    if metadata.name != name:
        raise ValueError(f"{path}: ats_model.json names model {metadata.name!r}, its directory {name!r}")
    return ServableModel(spec=metadata, version=version, path=path, saved_model=saved_model)
