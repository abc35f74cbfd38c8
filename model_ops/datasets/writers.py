"""Write a canvas layout to an image file without a full-size buffer where the format allows.

- PNG: streamed in bands of rows through one zlib stream (any size).
- TIFF: tiled and pyramidal; every tile of every level is rendered on its own
  from the objects it touches, the lower levels as SubIFDs of level 0 (the
  layout OpenSlide-style and OME readers expect).
- JPEG: rendered in memory (the format caps each side at 65535 px anyway).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator

import numpy as np

from model_ops.datasets.digits import DIGIT_SIZE
from model_ops.datasets.megapixel_digits import Layout, level_shape, render_canvas, render_region

_JPEG_MAX_SIDE = 65500
_PNG_BAND_ROWS = 256


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(layout: Layout, path: str | os.PathLike) -> None:
    """Write an 8-bit grayscale PNG, rendering and compressing ``_PNG_BAND_ROWS`` rows at a time."""
    compressor = zlib.compressobj(6)
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", layout.width, layout.height, 8, 0, 0, 0, 0)))
        for top in range(0, layout.height, _PNG_BAND_ROWS):
            rows = render_region(layout, top, 0, min(_PNG_BAND_ROWS, layout.height - top), layout.width)
            filtered = np.concatenate([np.zeros((rows.shape[0], 1), np.uint8), rows], axis=1)  # filter 0
            data = compressor.compress(filtered.tobytes())
            if data:
                out.write(_png_chunk(b"IDAT", data))
        out.write(_png_chunk(b"IDAT", compressor.flush()))
        out.write(_png_chunk(b"IEND", b""))


def write_jpeg(layout: Layout, path: str | os.PathLike, quality: int = 95) -> None:
    """Write a grayscale JPEG (in memory: JPEG cannot exceed 65535 px a side)."""
    from PIL import Image

    if max(layout.height, layout.width) > _JPEG_MAX_SIDE:
        raise ValueError(
            f"JPEG sides are limited to {_JPEG_MAX_SIDE} px; use TIFF or PNG for "
            f"a {layout.height}x{layout.width} canvas"
        )
    Image.fromarray(render_canvas(layout)[..., 0]).save(path, quality=quality)


def pyramid_factors(height: int, width: int, tile: int) -> list[int]:
    """Downsampling factors 1, 2, 4, ... until a whole level fits in one tile."""
    factors = [1]
    while max(level_shape(height, width, factors[-1])) > tile:
        factors.append(factors[-1] * 2)
    return factors


def _touched_tiles(layout: Layout, factor: int, tile: int) -> set[tuple[int, int]]:
    """(row, col) of every tile of the level downsampled by ``factor`` that an object touches."""
    touched: set[tuple[int, int]] = set()
    for y, x in zip(layout.ys.tolist(), layout.xs.tolist(), strict=True):
        rows = range(y // factor // tile, (y + DIGIT_SIZE - 1) // factor // tile + 1)
        cols = range(x // factor // tile, (x + DIGIT_SIZE - 1) // factor // tile + 1)
        touched.update((row, col) for row in rows for col in cols)
    return touched


def _encoded_tiles(
    layout: Layout, factor: int, tile: int, encode: Callable[[np.ndarray], bytes]
) -> Iterator[bytes]:
    """Row-major encoded tiles of one level, edge tiles padded with zeros as TIFF stores them.

    A gigapixel canvas is nearly all background: its empty tiles, 99% of a
    100k x 100k level, are one tile encoded once rather than rendered and
    encoded 150,000 times.
    """
    height, width = level_shape(layout.height, layout.width, factor)
    touched = _touched_tiles(layout, factor, tile)
    empty: bytes | None = None
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            if (top // tile, left // tile) not in touched:
                empty = empty if empty is not None else encode(np.zeros((tile, tile, 1), np.uint8))
                yield empty
                continue
            rows, cols = min(tile, height - top), min(tile, width - left)
            pixels = np.zeros((tile, tile, 1), np.uint8)
            pixels[:rows, :cols, 0] = render_region(layout, top, left, rows, cols, factor)
            yield encode(pixels)


def write_tiff(
    layout: Layout,
    path: str | os.PathLike,
    tile: int = 256,
    compression: str = "zlib",
    quality: int | None = None,
) -> list[int]:
    """Write a tiled pyramidal BigTIFF; returns the downsampling factor of each level.

    Level 0 is the main image; levels 1.. (factor 2, 4, ...) are its SubIFDs,
    each tile the exact area mean of the full-resolution pixels it covers.
    ``quality``: of JPEG tiles (default: the codec's, 95).
    """
    import tifffile

    if tile % 16:
        raise ValueError(f"TIFF tiles must be a multiple of 16 px, got {tile}")
    factors = pyramid_factors(layout.height, layout.width, tile)
    # tiles are encoded here with tifffile's own encoder for ``compression``, and written as they are
    scheme = (
        tifffile.COMPRESSION.ADOBE_DEFLATE
        if compression == "zlib"
        else tifffile.COMPRESSION[compression.upper()]
    )
    encoder = tifffile.TIFF.COMPRESSORS[scheme]
    arguments = {} if quality is None else {"level": quality}

    def encode(pixels: np.ndarray) -> bytes:
        return bytes(encoder(pixels, **arguments))

    options = {
        "dtype": np.uint8,
        "tile": (tile, tile),
        "compression": scheme,
        "photometric": "minisblack",
    }
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level, factor in enumerate(factors):
            tif.write(
                _encoded_tiles(layout, factor, tile, encode),
                shape=level_shape(layout.height, layout.width, factor),
                subifds=len(factors) - 1 if level == 0 else None,
                subfiletype=1 if level else 0,
                **options,
            )
    return factors


def write_canvas(layout: Layout, path: str | os.PathLike) -> None:
    """Write by file extension: ``.png``, ``.jpg``/``.jpeg`` or ``.tif``/``.tiff``."""
    suffix = os.fspath(path).lower().rsplit(".", 1)[-1]
    writers = {"png": write_png, "jpg": write_jpeg, "jpeg": write_jpeg, "tif": write_tiff, "tiff": write_tiff}
    if suffix not in writers:
        raise ValueError(f"unknown image format {suffix!r}; use one of {sorted(writers)}")
    writers[suffix](layout, path)
