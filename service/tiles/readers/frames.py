"""The image size a compressed TIFF tile announces in its own stream, read before decoding.

Image codecs (JPEG, JPEG 2000, PNG, WebP) allocate what their stream's header
announces, whatever the TIFF says the tile is: a 4 KB tile claiming 65000 x
65000 pixels costs 12 GB and minutes before the mismatch is noticed. The
TIFF reader reads the announced size here first and refuses a tile that
claims more than the tile's own size. Compressions with their own header
that are not parsed here are not served (``CHECKED``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers without a length field


def jpeg(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG stream's frame header (SOFn), walking its marker segments."""
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF or marker in _STANDALONE:
            at += 1 if marker == 0xFF else 2  # fill byte, or a marker with no segment
            continue
        if marker in _SOF:
            return struct.unpack_from(">HH", data, at + 5) if at + 9 <= len(data) else None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


def jpeg2000(data: bytes) -> tuple[int, int] | None:
    """(height, width) of the image area of a JPEG 2000 codestream's SIZ segment (raw or in JP2 boxes)."""
    at = data.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ
    if at < 0 or at + 24 > len(data):
        return None
    width, height, left, top = struct.unpack_from(">IIII", data, at + 8)
    return max(0, height - top), max(0, width - left)


def png(data: bytes) -> tuple[int, int] | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return height, width


def webp(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a lossy (VP8), lossless (VP8L) or extended (VP8X) WebP."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
    return None


# TIFF compression -> the parser of its streams' announced size
CHECKED: dict[int, Callable[[bytes], tuple[int, int] | None]] = {
    7: jpeg,  # JPEG
    33007: jpeg,  # ALT_JPEG
    34892: jpeg,  # JPEG_LOSSY (DNG)
    33003: jpeg2000,  # Aperio JPEG 2000, YCbCr
    33004: jpeg2000,  # JPEG 2000 lossy
    33005: jpeg2000,  # Aperio JPEG 2000, RGB
    34712: jpeg2000,  # JPEG 2000
    34933: png,
    50001: webp,
}
