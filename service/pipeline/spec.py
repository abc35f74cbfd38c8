"""A model version's ``ats_model.json`` (see models/README.md) as the typed
record the pipeline runs on, read and version-checked by model_ops.export."""
from __future__ import annotations

import dataclasses
import pathlib

from model_ops.export import ModelMetadata, check_compatible, load_metadata
from model_ops.lowres import low_resolution_size


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    classes: tuple[str, ...]
    low_scale: float
    low_size: tuple[int, int] | None
    patch_size: tuple[int, int]
    n_patches: int
    max_patches: int
    replace: bool
    receptive_field: int
    channels: int

    def low_shape(self, height: int, width: int) -> tuple[int, int]:
        """Size of the low-resolution view of a ``height`` x ``width`` image."""
        if self.low_size is not None:
            return self.low_size
        return low_resolution_size((height, width), self.low_scale)


def spec_from_metadata(metadata: ModelMetadata) -> ModelSpec:
    """Check what the server relies on beyond the metadata format itself."""
    if metadata.input_dtype != "uint8" or metadata.channels not in (1, 3):
        raise ValueError(f"model {metadata.name!r}: the server takes uint8 images of 1 or 3 channels, "
                         f"not {metadata.input_dtype} x {metadata.channels}")
    if len(metadata.patch_size) != 2 or not 1 <= metadata.n_patches <= metadata.max_patches:
        raise ValueError(f"model {metadata.name!r}: inconsistent patch_size/n_patches/max_patches")
    return ModelSpec(
        name=metadata.name, classes=tuple(metadata.classes), low_scale=float(metadata.low_scale),
        low_size=tuple(metadata.low_size) if metadata.low_size else None,
        patch_size=tuple(metadata.patch_size), n_patches=metadata.n_patches,
        max_patches=metadata.max_patches, replace=bool(metadata.replace),
        receptive_field=int(metadata.receptive_field), channels=metadata.channels)


def read_spec(version_dir: pathlib.Path) -> ModelSpec:
    """Read a version's metadata; raises if this process cannot run it (other
    TensorFlow or op-library version)."""
    metadata = load_metadata(version_dir)
    check_compatible(metadata)
    return spec_from_metadata(metadata)
