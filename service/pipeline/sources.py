"""Image sources: where the pipeline gets its low-resolution view and its patches.

Attention sampling reads an image twice: once as a small view, once as N small
patches. ``ImageSource`` is exactly that interface, so a source that never
holds the whole image (a tiled pyramid read region by region) plugs in next to
the in-memory one: register an opener for its payload kind with
``SourceRegistry.register``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from model_ops.lowres import low_resolution_view
from model_ops.patch_ops import extract_patches
from service.errors import Unsupported
from service.pipeline import decode
from service.pipeline.codecs import ALIGNMENT, aligned_empty
from service.pipeline.payload import EncodedImage, Payload, RawTensor


@dataclasses.dataclass(frozen=True)
class SourceLimits:
    """Server-wide bounds every opener enforces before reading pixels."""

    max_image_pixels: int
    max_image_bytes: int


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

    def region_views(
        self, offsets: np.ndarray, region_size: tuple[int, int], view_size: tuple[int, int]
    ) -> tf.Tensor:
        """uint8 (K, vh, vw, C) views of the regions of ``region_size`` at level-0
        ``offsets`` (K, 2), each area-resampled to ``view_size`` (a two-level model's
        fine views). This cuts them at full resolution, as training does; a pyramid
        reads them from a coarser level instead."""
        regions = self.patches(tf.constant(np.asarray(offsets, np.int32)[np.newaxis]), region_size)
        return low_resolution_view(regions[0], view_size)


def shared_tensor(pixels: np.ndarray) -> tf.Tensor:
    """``pixels`` with a batch axis as a tensor that shares their memory.

    ``tf.convert_to_tensor`` copies into TensorFlow's allocator, which with
    oneDNN keeps large blocks in a pool and never gives them back: after one
    100 MP image, 200 MB stay resident for good. Handing TensorFlow the NumPy
    buffer through DLPack instead lets the memory go back to the system with
    the array. The buffer is copied once here if it is read-only or not
    aligned as TensorFlow's kernels require.
    """
    batched = pixels[np.newaxis]
    if not batched.flags.writeable or batched.ctypes.data % ALIGNMENT or not batched.flags.c_contiguous:
        aligned = aligned_empty(batched.shape, batched.dtype)
        aligned[...] = batched
        batched = aligned
    return tf.experimental.dlpack.from_dlpack(batched.__dlpack__())


class InMemorySource(ImageSource):
    """A decoded image held as one uint8 array."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._pixels = shared_tensor(pixels)

    @property
    def pixels(self) -> tf.Tensor:
        """uint8 (1, H, W, C), sharing the decoded array's memory."""
        return self._pixels

    @property
    def shape(self) -> tuple[int, int, int]:
        _, height, width, channels = self._pixels.shape
        return int(height), int(width), int(channels)

    def low_view(self, size: tuple[int, int]) -> tf.Tensor:
        return low_resolution_view(self._pixels, size)

    def patches(self, offsets: tf.Tensor, patch_size: tuple[int, int]) -> tf.Tensor:
        return extract_patches(self._pixels, offsets, patch_size)


Opener = Callable[[Payload, int, SourceLimits], ImageSource]


def _open_encoded(payload: Payload, channels: int, limits: SourceLimits) -> ImageSource:
    assert isinstance(payload, EncodedImage)
    return InMemorySource(
        decode.decode_image(payload.data, channels, limits.max_image_pixels, limits.max_image_bytes)
    )


def _open_tensor(payload: Payload, channels: int, limits: SourceLimits) -> ImageSource:
    assert isinstance(payload, RawTensor)
    return InMemorySource(
        decode.tensor_pixels(payload, channels, limits.max_image_pixels, limits.max_image_bytes)
    )


class SourceRegistry:
    """The payload kinds one server accepts, each with its opener and limits.

    An object the server builds and passes down, not module state: two
    servers (or a benchmark and a server) in one process each keep their own.
    Uploaded images and raw tensors are always accepted; other kinds (``tile``)
    are added with :meth:`register`.
    """

    def __init__(self, limits: SourceLimits) -> None:
        self.limits = limits
        self._openers: dict[str, Opener] = {"image": _open_encoded, "tensor": _open_tensor}
        self._formats: dict[str, tuple[str, ...]] = {"image": decode.FORMATS}

    def register(self, kind: str, opener: Opener, formats: tuple[str, ...] = ()) -> None:
        """Serve payloads of ``kind`` with ``opener``; ``formats`` are the file
        formats it reads, as model metadata reports them."""
        if kind in self._openers:
            raise ValueError(f"a source for {kind!r} payloads is already registered")
        self._openers[kind] = opener
        self._formats[kind] = tuple(formats)

    def kinds(self) -> list[str]:
        return sorted(self._openers)

    def formats(self, kind: str) -> tuple[str, ...]:
        return self._formats.get(kind, ())

    def open(self, payload: Payload, channels: int) -> ImageSource:
        """Validate and open ``payload`` as a source with ``channels`` channels."""
        opener = self._openers.get(payload.kind)
        if opener is None:
            raise Unsupported(
                f"'{payload.kind}' sources are not supported by this server; "
                f"send the pixels as one of: {', '.join(self.kinds())}",
                field=payload.kind,
            )
        return opener(payload, channels, self.limits)
