"""Decode stage: encoded bytes or a raw tensor to validated uint8 HWC pixels.

Size limits are enforced from the header, before any pixel is decoded, so a
small file claiming a huge canvas (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput, TooLarge
from service.pipeline.payload import RawTensor

FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
TENSOR_DTYPES = ("uint8",)
_MODES = {1: "L", 3: "RGB"}


def disable_pillow_pixel_guard() -> None:
    """Leave the pixel limit to ``decode_image``, which checks the configured
    one from the header and names the image's size when it refuses.

    Pillow's own guard is process-wide and fixed (a warning past 89 MP, an
    error past 179 MP): it would refuse images the operator allowed, with a
    message that hides the size. The server calls this once at start: process
    state belongs to whoever owns the process, not to an import. Without it
    (a library user decoding in process) Pillow's guard still applies and its
    refusal is a ``TooLarge`` like ours.
    """
    Image.MAX_IMAGE_PIXELS = None


def _check_pixels(height: int, width: int, max_pixels: int, field: str) -> None:
    if height * width > max_pixels:
        raise TooLarge(
            f"image of {width}x{height} = {height * width} pixels exceeds the "
            f"server limit of {max_pixels} pixels",
            field=field,
        )


def _check_bytes(size: int, max_bytes: int, field: str) -> None:
    if size > max_bytes:
        raise TooLarge(f"{size} bytes exceed the server limit of {max_bytes} bytes", field=field)


# What Pillow raises for a damaged file, besides "unknown format": truncations
# (OSError, EOFError), malformed structures (SyntaxError, struct.error) and
# its own safety limits such as oversized text chunks (ValueError).
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def decode_image(data: bytes, channels: int, max_pixels: int, max_bytes: int) -> np.ndarray:
    """Decode an encoded image to (H, W, channels) uint8, converting its colour mode."""
    _check_bytes(len(data), max_bytes, "image")
    if not data:
        raise InvalidInput("image is empty", field="image")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise TooLarge(f"image exceeds the server limit of {max_pixels} pixels", field="image") from None
    except UnidentifiedImageError:
        raise InvalidInput(
            f"not a recognised image; accepted formats: {', '.join(FORMATS)}", field="image"
        ) from None
    except _CORRUPT as err:  # a header Pillow recognised, then could not parse
        raise InvalidInput(f"corrupt or truncated image header: {err}", field="image") from None
    with image:
        width, height = image.size
        _check_pixels(height, width, max_pixels, "image")
        try:
            image.load()
            converted = image if image.mode == _MODES[channels] else image.convert(_MODES[channels])
        except _CORRUPT as err:
            raise InvalidInput(f"corrupt or truncated {image.format} image: {err}", field="image") from None
    return np.asarray(converted).reshape(height, width, channels)


def tensor_pixels(tensor: RawTensor, channels: int, max_pixels: int, max_bytes: int) -> np.ndarray:
    """Validate a raw tensor's dtype, shape and length; view it as (H, W, C) uint8."""
    if tensor.dtype not in TENSOR_DTYPES:
        raise InvalidInput(
            f"tensor dtype {tensor.dtype} is not accepted; use {' or '.join(TENSOR_DTYPES)}",
            field="tensor.dtype",
        )
    shape = tuple(tensor.shape)
    if len(shape) == 2 and channels == 1:
        shape = (*shape, 1)
    if len(shape) != 3 or min(shape) <= 0 or shape[2] != channels:
        raise InvalidInput(
            f"tensor shape {list(tensor.shape)} is not (height, width, {channels}) with positive sizes",
            field="tensor.shape",
        )
    _check_pixels(shape[0], shape[1], max_pixels, "tensor.shape")
    _check_bytes(len(tensor.data), max_bytes, "tensor.data")
    expected = shape[0] * shape[1] * shape[2]
    if len(tensor.data) != expected:
        raise InvalidInput(
            f"tensor data has {len(tensor.data)} bytes, shape {list(shape)} of uint8 needs {expected}",
            field="tensor.data",
        )
    return np.frombuffer(tensor.data, dtype=np.uint8).reshape(shape)
