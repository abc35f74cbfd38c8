"""Decode stage: encoded bytes or a raw tensor to validated uint8 HWC pixels.

Size limits are enforced from the header, before any pixel is decoded, so a
small file claiming a huge canvas (a decompression bomb) costs nothing.

Every failure of Pillow on the client's bytes is the client's error
(``InvalidInput``, or ``TooLarge`` for the size limits); anything else that
goes wrong is a bug and surfaces as such.

Pixel values, whatever the file holds:

* 8-bit images keep their values; colour modes (palette, CMYK, YCbCr, LAB,
  HSV) are converted to RGB by Pillow, alpha is dropped (the colour under it
  is kept), and a one-channel model gets ITU-R 601-2 luma (Pillow's ``L``).
* 16-bit samples keep their high byte: ``v >> 8``, i.e. ``floor(v / 256)``.
  Pillow already reads 16-bit colour and alpha PNGs and TIFFs that way, so
  16-bit grey images (``I;16``, which Pillow would clip to 255) follow the
  same rule, and a grey and a colour version of one picture decode alike.
  The rule is exact, monotone, cuts 0..65535 into 256 equal bins and maps
  ``257 * k`` (an 8-bit value widened to 16 bits) back to ``k``.
* 32-bit integer (``I``, also signed 16-bit TIFFs) and floating-point (``F``)
  images are refused, naming the mode: no scale fits every such file.
* Multi-frame files (TIFF pages, animated PNG and WebP): the first frame.

Pillow reads every header; the common layouts are then decoded by
imagecodecs (:mod:`service.pipeline.codecs`: the same samples, faster, with
the GIL released) and converted by the same rules (colour to grey by
Pillow's own conversion), so the pixels, the accepted files and the
refusals are the same whichever decoder ran (tests/service/test_decode_backends.py).
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from service import budget
from service.errors import InvalidInput, TooLarge, clip
from service.pipeline import codecs
from service.pipeline.payload import RawTensor

FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
TENSOR_DTYPES = ("uint8",)
_MODES = {1: "L", 3: "RGB"}
# Pillow's 16-bit grey modes (byte orders): scaled to L by their high byte.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes with no 8-bit scale that fits every file: refused.
_REFUSED = {"I": "32-bit or signed integer", "F": "floating-point"}
# Modes Pillow converts to L or RGB only through another mode.
_THROUGH = {"P": "RGBA", "PA": "RGBA", "La": "LA", "LAB": "RGB"}
# Every mode the 8-bit path accepts (the rest of Pillow's modes).
_EIGHT_BIT = (
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV",
)  # fmt: skip

# Conversions of imagecodecs' samples run on bands of this many pixels, so
# they hold a few MB beyond the samples and the result.
_BAND_PIXELS = 1 << 20

# What Pillow raises for bytes it cannot parse or decode: truncations and
# decoder errors (OSError, EOFError), malformed structures (SyntaxError,
# struct.error), its own safety limits such as oversized text chunks
# (ValueError), and, found by tests/fuzz, TIFF tags of the wrong type
# (TypeError: a float or a rational where a strip offset goes) or out of
# C's range (OverflowError: offsets, palette entries).
CORRUPT = (OSError, EOFError, SyntaxError, struct.error, ValueError, TypeError, OverflowError)


def take_over_pillow_guards() -> None:
    """Leave the pixel limit to ``decode_image``, which checks the configured
    one from the header and names the image's size when it refuses.

    Pillow's own guard is process-wide and fixed (a warning past 89 MP, an
    error past 179 MP): it would refuse images the operator allowed, with a
    message that hides the size. The server calls this once at start: process
    state belongs to whoever owns the process, not to an import. Without it
    (a library user decoding in process) Pillow's guard still applies and its
    refusal is a ``TooLarge`` like ours. Pillow's warnings are silenced too.
    """
    Image.MAX_IMAGE_PIXELS = None
    # Pillow warns about odd files (a truncated chunk, a palette with
    # transparency); Python keeps every distinct warning text it has shown,
    # and some texts carry byte counts, so a stream of bad files would grow
    # that registry without bound. Refusals are the client's answer instead.
    warnings.filterwarnings("ignore", module=r"PIL\.")


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


def eight_bit(image: Image.Image, channels: int) -> Image.Image:
    """``image`` as 8-bit L (1 channel) or RGB (3), by the rules of the module
    docstring; refused modes raise ``InvalidInput``, Pillow's errors on the
    pixels propagate. Every reader of client images converts through here."""
    check_mode(image.mode)
    target = _MODES[channels]
    if image.mode in _SIXTEEN_BIT:
        return Image.fromarray((np.asarray(image) >> 8).astype(np.uint8)).convert(target)
    step = _THROUGH.get(image.mode)
    if step is not None and step != target:
        image = image.convert(step)
    return image if image.mode == target else image.convert(target)


def check_mode(mode: str) -> None:
    """Refuse, from the header, a Pillow mode with no 8-bit rule."""
    if mode in _REFUSED:
        raise InvalidInput(
            f"images of mode {mode} ({_REFUSED[mode]} samples) are not accepted: "
            "send 8-bit or unsigned 16-bit samples",
            field="image",
        )
    if mode not in _EIGHT_BIT and mode not in _SIXTEEN_BIT:
        raise InvalidInput(f"images of mode {clip(mode)} are not accepted", field="image")


def peak_bytes_per_pixel(mode: str, channels: int) -> int:
    """Memory a decode holds per pixel at its peak: Pillow's image (4 bytes a
    pixel for every multi-band mode, 1 for 8-bit grey; 16-bit grey is shifted
    through NumPy arrays), or the PNG path's inflated rows and samples (2 bytes
    a band), its converted copy, the array, and the pipeline's tensor copy of it."""
    bands = Image.getmodebands(mode)
    # 16-bit grey: 2 bytes stored, then a uint16 array and its shifted copy
    stored = max(4, 2 * bands) if bands > 1 or mode in ("I", "F") else 7 if "16" in mode else 1
    converted = 0 if mode == _MODES[channels] else (4 if channels == 3 else 1)
    return stored + converted + 2 * channels


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
    except CORRUPT as err:  # a header Pillow recognised, then could not parse
        raise InvalidInput(f"corrupt or truncated image header: {clip(str(err))}", field="image") from None
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidInput(f"{image.format} image of {width}x{height} pixels has none", field="image")
        _check_pixels(height, width, max_pixels, "image")
        check_mode(image.mode)
        budget.before_decode(
            height * width, peak_bytes_per_pixel(image.mode, channels), f"{image.format} image"
        )
        try:
            samples = codecs.samples(image, data, channels)
            if samples is not None:
                mode = image.mode
            else:
                image.load()
                converted = eight_bit(image, channels)
        except CORRUPT as err:
            raise InvalidInput(
                f"corrupt or truncated {image.format} image: {clip(str(err))}", field="image"
            ) from None
    if samples is not None:  # decoded: any error from here on is a bug, not the client's
        return _converted(samples, mode, channels)
    pixels = np.asarray(converted)
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def _converted(samples: np.ndarray, mode: str, channels: int) -> np.ndarray:
    """imagecodecs' ``samples`` of a ``mode`` image as (H, W, channels) uint8,
    by the rules of the module docstring: the high byte of 16-bit grey, alpha
    dropped, grey repeated for colour, and colour to grey by Pillow's own
    conversion, a band of rows at a time. Aligned as TensorFlow needs."""
    height, width = samples.shape[:2]
    if mode == _MODES[channels]:
        return samples.reshape(height, width, channels)
    pixels = codecs.aligned_empty((height, width, channels))
    if samples.dtype == np.uint16:
        samples = samples >> 8
    if samples.ndim == 2 or mode == "LA":
        grey = samples if samples.ndim == 2 else samples[..., 0]
        for channel in range(channels):  # one plane at a time: several times faster than broadcasting
            pixels[..., channel] = grey
    elif channels == 3:  # RGBA
        pixels[...] = samples[..., :3]
    else:
        # Pillow holds 6 bytes per pixel of a band (its 4-byte copy, the grey
        # result, our array of it): bands of at most a third of the image keep
        # the peak within what peak_bytes_per_pixel reserved for Pillow's decode
        rows = max(1, min(_BAND_PIXELS, height * width // 3) // width)
        for top in range(0, height, rows):  # RGB or RGBA to L: alpha ignored
            luma = Image.fromarray(samples[top : top + rows]).convert("L")
            pixels[top : top + rows, :, 0] = np.asarray(luma)
    return pixels


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
    budget.before_copy(expected, "tensor")  # the pipeline's own copy; the bytes are already here
    return np.frombuffer(tensor.data, dtype=np.uint8).reshape(shape)
