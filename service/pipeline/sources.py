"""Image sources: where the pipeline gets its low-resolution view and its patches.

Attention sampling reads an image twice: once as a small view, once as N small
patches. ``ImageSource`` is exactly that interface, so a source that never
holds the whole image (a tiled pyramid read region by region) plugs in next to
the in-memory one: register an opener for its payload kind with
``register_source``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from model_ops.lowres import low_resolution_view
from model_ops.patch_ops import extract_patches
from service.pipeline import decode
from service.pipeline.errors import Unsupported
from service.pipeline.payload import EncodedImage, Payload, RawTensor


@dataclasses.dataclass(frozen=True)
class SourceLimits:
    """Server-wide bounds every opener enforces before reading pixels."""

    max_image_pixels: int
    max_image_bytes: int
    data_root: str = ""


class ImageSource(abc.ABC):
    """An image the pipeline can view at low resolution and cut patches from."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int, int]:
        """Full-resolution (height, width, channels)."""

    @abc.abstractmethod
    def low_view(self, size: tuple[int, int]) -> tf.Tensor:
        """uint8 (1, h, w, C) view of the whole image at ``size``."""

    @abc.abstractmethod
    def patches(self, offsets: tf.Tensor, patch_size: tuple[int, int]) -> tf.Tensor:
        """uint8 (1, N, ph, pw, C) patches at int32 top-left ``offsets`` (1, N, 2);
        pixels outside the image are zeros."""


class InMemorySource(ImageSource):
    """A decoded image held as one uint8 array."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._pixels = tf.convert_to_tensor(pixels[np.newaxis])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self._pixels.shape[1:])

    def low_view(self, size: tuple[int, int]) -> tf.Tensor:
        return low_resolution_view(self._pixels, size)

    def patches(self, offsets: tf.Tensor, patch_size: tuple[int, int]) -> tf.Tensor:
        return extract_patches(self._pixels, offsets, patch_size)


Opener = Callable[[Payload, int, SourceLimits], ImageSource]


def _open_encoded(payload: EncodedImage, channels: int, limits: SourceLimits) -> ImageSource:
    return InMemorySource(
        decode.decode_image(payload.data, channels, limits.max_image_pixels, limits.max_image_bytes)
    )


def _open_tensor(payload: RawTensor, channels: int, limits: SourceLimits) -> ImageSource:
    return InMemorySource(
        decode.tensor_pixels(payload, channels, limits.max_image_pixels, limits.max_image_bytes)
    )


_OPENERS: dict[str, Opener] = {"image": _open_encoded, "tensor": _open_tensor}
_FORMATS: dict[str, tuple[str, ...]] = {"image": decode.FORMATS}


def register_source(kind: str, opener: Opener, formats: tuple[str, ...] = ()) -> None:
    """Make payloads of ``kind`` ("tile", ...) servable by ``opener``; ``formats``
    are the file formats it reads, as GetModelMetadata reports them."""
    _OPENERS[kind] = opener
    _FORMATS[kind] = tuple(formats)


def accepted_kinds() -> list[str]:
    return sorted(_OPENERS)


def accepted_formats(kind: str) -> tuple[str, ...]:
    return _FORMATS.get(kind, ()) if kind in _OPENERS else ()


def open_source(payload: Payload, channels: int, limits: SourceLimits) -> ImageSource:
    """Validate and open ``payload`` as a source with ``channels`` channels."""
    opener = _OPENERS.get(payload.kind)
    if opener is None:
        raise Unsupported(
            f"'{payload.kind}' sources are not supported by this server yet; "
            f"send the pixels as one of: {', '.join(accepted_kinds())}",
            field=payload.kind,
        )
    return opener(payload, channels, limits)
