"""PNG decoding with libdeflate for the layouts the server sees most.

A PNG's pixels are a zlib stream of filtered rows. libpng inflates it with
zlib, which on a mostly empty 1500x1500 canvas takes 4.4 of the 5.2 ms its
decode costs; libdeflate (imagecodecs' ``deflate_decode``) inflates the same
stream in 0.17 ms (bench/results/decode.md). Undoing the row filters is left
to a small C function of the op library (``ats_png_unfilter``), which writes
into the caller's aligned buffer with the GIL released, as libdeflate does.

Only files that are whole and plain take this path: a valid signature, every
chunk's CRC right, one header, consecutive image-data chunks, no unknown
critical chunk, 8-bit samples (16-bit grey), no interlacing, and a stream
that inflates to exactly the size the header gives. Anything else returns
None and is decoded as before (libpng, then Pillow), so what is accepted
and what is refused does not change.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import zlib
from collections.abc import Callable

import imagecodecs
import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types of the layouts taken here: samples per pixel.
_BANDS = {0: 1, 2: 3, 4: 2, 6: 4}
# Encoders write image data in chunks of 8 KB and more (libpng, Pillow, zlib's
# buffer); the walk allows 4096 chunks, or one per 4 KB of a larger file.
_MIN_CHUNKS, _BYTES_PER_CHUNK = 4096, 4096


@functools.cache
def _unfilter() -> Callable[..., int]:
    """The C function, from the op library (loaded through TensorFlow first,
    so that its version is checked and its dependencies are resolved)."""
    from model_ops.op_library import LIBRARY_PATH, load_op_library

    load_op_library()
    function = ctypes.CDLL(str(LIBRARY_PATH)).ats_png_unfilter
    function.restype = ctypes.c_int64
    function.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 4, ctypes.c_void_p]
    return function


def decode(data: bytes, out: np.ndarray) -> np.ndarray | None:
    """``data``'s pixels written into ``out`` ((H, W) or (H, W, bands), uint8
    or native uint16, C-contiguous), or None where this path does not apply."""
    found = _image_data(data)
    if found is None:
        return None
    (width, height, depth, colour), stream = found
    bands = _BANDS.get(colour)
    if bands is None or (depth, bands) not in ((8, bands), (16, 1)):
        return None
    dtype = np.uint8 if depth == 8 else np.dtype(np.uint16)
    shape = (height, width) if bands == 1 else (height, width, bands)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        return None
    row_bytes = width * bands * depth // 8
    size = height * (row_bytes + 1)
    try:
        inflated = imagecodecs.deflate_decode(stream, out=size)  # refuses to write more
    except imagecodecs.DeflateError:
        return None
    if len(inflated) != size:
        return None
    scanlines = np.frombuffer(inflated, np.uint8)
    pixel_bytes = bands * depth // 8
    if _unfilter()(scanlines.ctypes.data, size, height, row_bytes, pixel_bytes, out.ctypes.data):
        return None
    if depth == 16 and np.little_endian:
        out.byteswap(inplace=True)  # PNG stores big-endian samples
    return out


def _image_data(data: bytes) -> tuple[tuple[int, int, int, int], bytes] | None:
    """((width, height, bit depth, colour type), the zlib stream) of a plain
    PNG whose chunks all check out, else None."""
    if not data.startswith(_SIGNATURE):
        return None
    view = memoryview(data)
    header: tuple[int, int, int, int] | None = None
    parts: list[memoryview] = []
    ended_idat = False
    position = len(_SIGNATURE)
    # Chunks are walked in Python: a file of countless tiny chunks goes to libpng, which walks them in C.
    chunks_left = max(_MIN_CHUNKS, len(data) // _BYTES_PER_CHUNK)
    while position + 12 <= len(data):
        chunks_left -= 1
        if chunks_left < 0:
            return None
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            return None
        body = view[position + 8 : end]
        if zlib.crc32(view[position + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return None
        position = end + 4
        if header is None:
            if kind != b"IHDR" or length != 13:
                return None
            width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if compression or filtering or interlace or not width or not height:
                return None
            header = (width, height, depth, colour)
        elif kind == b"IDAT":
            if ended_idat:
                return None
            parts.append(body)
        elif kind == b"IEND":
            return (header, b"".join(parts)) if parts and position == len(data) else None
        elif kind == b"PLTE":  # a suggested palette, for colour only, before the image data
            if header[3] not in (2, 6) or parts:
                return None
        elif kind[0] & 0x20 == 0:  # critical (upper-case first letter): a second IHDR or an unknown one
            return None
        else:
            ended_idat = bool(parts)
    return None
