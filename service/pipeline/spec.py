"""The model's ``ats_model.json`` (see models/README.md) as a typed, checked record."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from model_ops.lowres import low_resolution_size

METADATA_FILE = "ats_model.json"
SUPPORTED_FORMAT = 1


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
    pixel_scale: float
    feature_dim: int
    raw: dict[str, Any]

    def low_shape(self, height: int, width: int) -> tuple[int, int]:
        """Size of the low-resolution view of a ``height`` x ``width`` image."""
        if self.low_size is not None:
            return self.low_size
        return low_resolution_size((height, width), self.low_scale)


def parse_spec(raw: dict[str, Any]) -> ModelSpec:
    """Check and type the metadata; raises ValueError naming the bad key."""
    if raw.get("format") != SUPPORTED_FORMAT:
        raise ValueError(f"{METADATA_FILE}: format {raw.get('format')!r} is not {SUPPORTED_FORMAT}")
    if raw.get("input_dtype", "uint8") != "uint8":
        raise ValueError(f"{METADATA_FILE}: input_dtype {raw['input_dtype']!r} is not 'uint8'")
    try:
        spec = ModelSpec(
            name=str(raw["name"]),
            classes=tuple(str(c) for c in raw["classes"]),
            low_scale=float(raw["low_scale"]),
            low_size=tuple(int(v) for v in raw["low_size"]) if raw.get("low_size") else None,
            patch_size=tuple(int(v) for v in raw["patch_size"]),
            n_patches=int(raw["n_patches"]),
            max_patches=int(raw["max_patches"]),
            replace=bool(raw["replace"]),
            receptive_field=int(raw.get("receptive_field", 0)),
            channels=int(raw["channels"]),
            pixel_scale=float(raw["pixel_scale"]),
            feature_dim=int(raw["feature_dim"]),
            raw=dict(raw),
        )
    except KeyError as err:
        raise ValueError(f"{METADATA_FILE}: missing key {err}") from None
    if spec.channels not in (1, 3):
        raise ValueError(f"{METADATA_FILE}: channels must be 1 or 3, not {spec.channels}")
    if len(spec.patch_size) != 2 or not 1 <= spec.n_patches <= spec.max_patches:
        raise ValueError(f"{METADATA_FILE}: inconsistent patch_size/n_patches/max_patches")
    return spec


def read_spec(version_dir: pathlib.Path) -> ModelSpec:
    return parse_spec(json.loads((version_dir / METADATA_FILE).read_text()))
