"""imagecodecs decoders for the common layouts of each accepted format.

imagecodecs wraps the same libraries Pillow does (libpng, libjpeg-turbo,
libtiff, libwebp) and, for the layouts listed here, gives the very same
samples, faster, with the GIL released for the whole decode (Pillow holds
it while it decodes WebP). Plain PNGs skip libpng's zlib altogether
(:mod:`service.pipeline.png`). Measured: bench/results/decode.md.

Pillow still reads every header: the guards in :mod:`service.pipeline.decode`
need the size and mode before any pixel is decoded, and the layouts below
are recognised from what Pillow parsed. The output buffer is allocated from
that header and handed to the decoder, which refuses to write more, so a
file whose header and data disagree cannot outgrow the memory reserved for
it. Anything else (palettes, bit depths other than 8, 16-bit colour,
transparency chunks, inverted grey, planar or JPEG-compressed TIFFs,
animations) and any bytes imagecodecs refuses are left to Pillow, which
then gives its verdict, so the set of accepted files and the status of a
refusal are Pillow's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import imagecodecs
import numpy as np
import numpy.typing as npt
from PIL import ImageFile, TiffImagePlugin

from service.pipeline import png

# Pillow modes the decoders below produce, as (bands, dtype) of the samples.
_LAYOUTS = {
    "L": (1, np.uint8),
    "LA": (2, np.uint8),
    "RGB": (3, np.uint8),
    "RGBA": (4, np.uint8),
    "I;16": (1, np.uint16),
    "I;16B": (1, np.uint16),
}
# Pillow's rawmodes (how it unpacks the stored samples) that are the mode's
# samples as they are: not "L;4", "L;I" (inverted), "RGB;16B", "P" ...
_SIXTEEN = ("I;16", "I;16B", "I;16N")
_AS_STORED = {
    "L": ("L",),
    "LA": ("LA",),
    "RGB": ("RGB",),
    "RGBA": ("RGBA",),
    "I;16": _SIXTEEN,
    "I;16B": _SIXTEEN,
}
# TIFF compressions Pillow leaves to libtiff too (it reads raw and PackBits
# strips itself, more strictly), and the tags that say how samples are stored.
_TIFF_COMPRESSIONS = ("tiff_lzw", "tiff_adobe_deflate", "tiff_deflate")
_MIN_IS_BLACK, _RGB = 1, 2
_PHOTOMETRIC, _PLANAR, _FILL_ORDER, _SAMPLE_FORMAT = 262, 284, 266, 339
_ROWS_PER_STRIP, _STRIP_OFFSETS, _STRIP_BYTE_COUNTS = 278, 273, 279
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_BYTE_COUNTS = 322, 323, 324, 325
_TILE_PIXELS = 512 * 512
# TensorFlow adopts a NumPy buffer without copying it when it is aligned to
# this many bytes (service.pipeline.sources.shared_tensor).
ALIGNMENT = 64
_PNG_END = b"\0\0\0\0IEND\xaeB`\x82"  # the IEND chunk: no data, its CRC
_JPEG_END = b"\xff\xd9"  # EOI

Decoder = Callable[..., np.ndarray]


def _png(image: ImageFile.ImageFile, data: bytes) -> bool:
    return (
        len(image.tile) == 1
        and image.tile[0].args in _AS_STORED[image.mode]
        and "transparency" not in image.info  # imagecodecs would add an alpha band
        and getattr(image, "n_frames", 1) == 1
        # libpng stops after the image data; Pillow reads the chunks up to IEND
        and data.endswith(_PNG_END)
    )


def _jpeg(image: ImageFile.ImageFile, data: bytes) -> bool:
    return (
        len(image.tile) == 1
        and image.tile[0].args == (image.mode, "")
        and image.mode in ("L", "RGB")
        # libjpeg ends a truncated file with grey where Pillow refuses it
        and data.endswith(_JPEG_END)
    )


def _tiff(image: ImageFile.ImageFile, data: bytes) -> bool:
    assert isinstance(image, TiffImagePlugin.TiffImageFile)
    tags, (width, height) = image.tag_v2, image.size
    return (
        bool(image.tile)
        and all(
            tile.codec_name == "libtiff"
            and isinstance(tile.args, tuple)
            and tile.args[0] in _AS_STORED[image.mode]
            for tile in image.tile
        )
        and image.info.get("compression") in _TIFF_COMPRESSIONS
        and tags.get(_PHOTOMETRIC) in (_MIN_IS_BLACK, _RGB)
        and tags.get(_PLANAR, 1) == 1
        and tags.get(_FILL_ORDER, 1) == 1
        and tags.get(_SAMPLE_FORMAT, 1) in (1, (1,) * len(image.getbands()))
        and _chunks_inside(tags, width, height, len(data))
    )


def _chunks_inside(tags: TiffImagePlugin.ImageFileDirectory_v2, width: int, height: int, size: int) -> bool:
    """Whether the file declares every strip or tile of the image, each inside
    its ``size`` bytes, and no tile larger than the image (or than
    ``_TILE_PIXELS``): libtiff zero-fills what is missing where Pillow refuses
    the file, and allocates a tile's buffer as the file declares it."""
    if _TILE_WIDTH in tags:
        across, down = tags.get(_TILE_WIDTH), tags.get(_TILE_LENGTH)
        positions, lengths = tags.get(_TILE_OFFSETS), tags.get(_TILE_BYTE_COUNTS)
    else:
        across, down = width, tags.get(_ROWS_PER_STRIP, height)
        positions, lengths = tags.get(_STRIP_OFFSETS), tags.get(_STRIP_BYTE_COUNTS)
    starts, sizes = _positive(positions), _positive(lengths)
    across_down = _positive((across, down))
    if starts is None or sizes is None or across_down is None:
        return False
    across, down = across_down
    chunks = -(-width // across) * -(-height // down)
    return (
        across * down <= max(_TILE_PIXELS, width * height)
        and len(starts) == len(sizes) == chunks
        and all(at + length <= size for at, length in zip(starts, sizes, strict=True))
    )


def _positive(value: object) -> tuple[int, ...] | None:
    """A tag's value as positive ints, or None where it holds anything else."""
    values = value if isinstance(value, tuple) else (value,)
    return values if all(isinstance(v, int) and v > 0 for v in values) else None


def _webp(image: ImageFile.ImageFile, data: bytes) -> bool:
    return getattr(image, "n_frames", 1) == 1


class Codec(NamedTuple):
    """How imagecodecs decodes one format."""

    reads_alike: Callable[[ImageFile.ImageFile, bytes], bool]  # this file's layout, as Pillow does
    decode: Decoder
    # what it raises on bytes it cannot decode: its own error, and ValueError
    # when the data holds another size or layout than the header and the buffer
    errors: tuple[type[Exception], ...]
    # worth it when colour must become grey: Pillow converts from its own
    # decode buffer, imagecodecs' samples need one more copy (bench/results/decode.md)
    to_grey: bool = True


def _png_decode(data: bytes, out: np.ndarray) -> np.ndarray:
    """libdeflate and the op library's filters where the file is plain, else libpng."""
    pixels = png.decode(data, out)
    return imagecodecs.png_decode(data, out=out) if pixels is None else pixels


DECODERS: dict[str, Codec] = {
    "PNG": Codec(_png, _png_decode, (imagecodecs.PngError, ValueError)),
    # the same libjpeg-turbo as Pillow's, as fast: the copy loses when converting
    "JPEG": Codec(_jpeg, imagecodecs.jpeg8_decode, (imagecodecs.Jpeg8Error, ValueError), to_grey=False),
    # IndexError: a first directory libtiff cannot read where Pillow's parser could
    "TIFF": Codec(_tiff, imagecodecs.tiff_decode, (imagecodecs.TiffError, ValueError, IndexError)),
    "WEBP": Codec(_webp, imagecodecs.webp_decode, (imagecodecs.WebpError, ValueError)),
}


def aligned_empty(shape: tuple[int, ...], dtype: npt.DTypeLike = np.uint8) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an
    ``ALIGNMENT`` boundary (NumPy's large allocations start 16 bytes past a
    page): TensorFlow can then take the decoded pixels as they are."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def samples(image: ImageFile.ImageFile, data: bytes, channels: int) -> np.ndarray | None:
    """The stored samples of ``image`` (opened by Pillow from ``data``, not
    loaded) for a model of ``channels``: (H, W) for one band, else (H, W,
    bands), uint8, or uint16 for 16-bit grey. None where Pillow decodes it: a
    layout not listed here, a conversion Pillow does faster, or bytes the
    decoder refuses."""
    codec = DECODERS.get(image.format or "")
    layout = _LAYOUTS.get(image.mode)
    if codec is None or layout is None:
        return None
    bands, dtype = layout
    to_grey = channels == 1 and bands > 2
    if (to_grey and not codec.to_grey) or not codec.reads_alike(image, data):
        return None
    width, height = image.size
    out = aligned_empty((height, width, bands) if bands > 1 else (height, width), dtype)
    try:
        return codec.decode(data, out=out)
    except codec.errors:
        return None
