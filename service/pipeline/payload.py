"""What a request hands the pipeline as its image, before anything is decoded."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """Encoded file bytes (PNG, JPEG, TIFF, WebP)."""

    data: bytes
    kind = "image"


@dataclasses.dataclass(frozen=True)
class RawTensor:
    """Row-major pixels with their shape and element type name (e.g. "uint8")."""

    shape: tuple[int, ...]
    dtype: str
    data: bytes
    kind = "tensor"


@dataclasses.dataclass(frozen=True)
class TileRef:
    """A pyramidal image on the server, relative to its data root."""

    path: str
    level: int | None = None
    kind = "tile"


Payload = EncodedImage | RawTensor | TileRef
