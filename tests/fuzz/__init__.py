"""Fuzzing the service's inputs: the damage the fuzz tests do to valid files.

Two kinds, both reproducible from a seed:

* ``header_forgeries(data)``: every edge value (``INTERESTING``) in every
  field of a file's header that sizes or types what follows: PNG's IHDR
  (with its CRC recomputed, so the damage reaches the decoder instead of
  failing a checksum), each entry of a TIFF or BigTIFF first directory
  (type, count, value), JPEG frame headers and segment lengths, RIFF (WebP)
  chunk sizes and VP8X canvas sizes. Tests run them all; ``mutate`` draws
  from them.
* ``mutate(data, rng)``: one to three random edits (bit flips, overwrites
  with edge values, cuts, insertions, deletions, duplicated runs, forgeries,
  damage inside a PNG chunk with its CRC fixed) driven by ``rng``.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator

# Values that sit on the edges parsers get wrong: zero, one, sign bits, all ones.
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")

# One forgery: write these bytes at this offset (the file keeps its length).
Edit = tuple[int, bytes]


def apply(data: bytes, edit: Edit) -> bytes:
    at, new = edit
    return data[:at] + new + data[at + len(new) :]


def _edges(width: int, byteorder: str) -> list[bytes]:
    """Every interesting value that fits ``width`` bytes, encoded."""
    values = sorted({v & ((1 << 8 * width) - 1) for v in INTERESTING})
    return [v.to_bytes(width, byteorder) for v in values]


# -- PNG --------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(offset, type, contents) of each complete PNG chunk, as far as the framing holds."""
    at = len(PNG_MAGIC)
    while at + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        if at + 12 + length > len(data):
            return
        yield at, data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length


# IHDR: width, height, bit depth, colour type, compression, filter, interlace
_IHDR_FIELDS = ((0, 4), (4, 4), (8, 1), (9, 1), (10, 1), (11, 1), (12, 1))


def _png_forgeries(data: bytes) -> Iterator[Edit]:
    for at, kind, body in png_chunks(data):
        if kind == b"IHDR" and len(body) == 13:
            for offset, width in _IHDR_FIELDS:
                for value in _edges(width, "big"):
                    yield at, png_chunk(kind, body[:offset] + value + body[offset + width :])


def _damage_png_chunk(data: bytearray, rng: random.Random) -> None:
    """Random damage inside one chunk's contents, its CRC recomputed."""
    chunks = [c for c in png_chunks(bytes(data)) if c[2]] if data.startswith(PNG_MAGIC) else []
    if not chunks:
        return _flip_bits(data, rng)
    at, kind, body = rng.choice(chunks)
    damaged = bytearray(body)
    rng.choice((_flip_bits, _overwrite, _truncate, _insert))(damaged, rng)
    data[at : at + 12 + len(body)] = png_chunk(kind, bytes(damaged))
    return None


# -- TIFF, BigTIFF ---------------------------------------------------------------
def _tiff_forgeries(data: bytes) -> Iterator[Edit]:
    order = "<" if data[:2] == b"II" else ">"
    byteorder = "little" if order == "<" else "big"
    try:
        if struct.unpack_from(order + "H", data, 2)[0] == 43:  # BigTIFF: 8-byte counts and offsets
            wide, (ifd,) = 8, struct.unpack_from(order + "Q", data, 8)
            (count,) = struct.unpack_from(order + "Q", data, ifd)
        else:
            wide, (ifd,) = 4, struct.unpack_from(order + "I", data, 4)
            (count,) = struct.unpack_from(order + "H", data, ifd)
    except (struct.error, OverflowError):  # header or directory offset already damaged
        return
    size = 4 + 2 * wide
    first = ifd + (8 if wide == 8 else 2)
    for entry in range(first, min(first + size * count, len(data) - size + 1), size):
        for kind in range(19):
            yield entry + 2, struct.pack(order + "H", kind)
        for value in _edges(4, byteorder):
            padded = value.ljust(wide, b"\0") if byteorder == "little" else value.rjust(wide, b"\0")
            yield entry + 4, padded  # count
            yield entry + 4 + wide, padded  # value or offset


# -- JPEG --------------------------------------------------------------------------
# SOF: height, width, component count, first component's id and sampling factors
_SOF_FIELDS = ((5, 2), (7, 2), (9, 1), (10, 1), (11, 1))


def _jpeg_forgeries(data: bytes) -> Iterator[Edit]:
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, (length,) = data[at + 1], struct.unpack_from(">H", data, at + 2)
        for value in _edges(2, "big"):
            yield at + 2, value
        if marker in (0xC0, 0xC1, 0xC2):
            for offset, width in _SOF_FIELDS:
                for value in _edges(width, "big"):
                    yield at + offset, value
        if marker == 0xDA:  # entropy-coded data follows
            return
        at += 2 + length


# -- WebP (RIFF) -----------------------------------------------------------------
def _riff_forgeries(data: bytes) -> Iterator[Edit]:
    for value in _edges(4, "little"):
        yield 4, value
    at = 12
    while at + 8 <= len(data):
        kind, (length,) = data[at : at + 4], struct.unpack_from("<I", data, at + 4)
        for value in _edges(4, "little"):
            yield at + 4, value
        if kind == b"VP8X":  # canvas width and height minus one, 24 bits each
            for offset in (12, 15):
                for value in _edges(3, "little"):
                    yield at + offset, value
        at += 8 + length + length % 2


def header_forgeries(data: bytes) -> list[Edit]:
    """Every header forgery of ``data`` (empty for an unknown format)."""
    if data.startswith(PNG_MAGIC):
        return list(_png_forgeries(data))
    if data[:4] in TIFF_MAGICS:
        return list(_tiff_forgeries(data))
    if data.startswith(b"\xff\xd8"):
        return list(_jpeg_forgeries(data))
    if data.startswith(b"RIFF"):
        return list(_riff_forgeries(data))
    return []


# -- random edits ---------------------------------------------------------------
def _flip_bits(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _overwrite(data: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(data))
    width = min(rng.choice((1, 2, 4)), len(data) - at)
    data[at : at + width] = rng.choice(_edges(width, rng.choice(("big", "little"))))


def _truncate(data: bytearray, rng: random.Random) -> None:
    del data[rng.randrange(len(data)) :]


def _insert(data: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(data) + 1)
    data[at:at] = rng.randbytes(rng.randint(1, 16))


def _delete(data: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(data))
    del data[at : at + rng.randint(1, 64)]


def _duplicate(data: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(data))
    piece = data[at : at + rng.randint(1, 256)]
    where = rng.randrange(len(data) + 1)
    data[where:where] = piece


def _forge(data: bytearray, rng: random.Random) -> None:
    edits = header_forgeries(bytes(data))
    if not edits:
        return _flip_bits(data, rng)
    at, new = rng.choice(edits)
    data[at : at + len(new)] = new
    return None


MUTATORS: tuple[Callable[[bytearray, random.Random], None], ...] = (
    _flip_bits,
    _overwrite,
    _truncate,
    _insert,
    _delete,
    _duplicate,
    _forge,
    _forge,
    _damage_png_chunk,
)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One damaged copy of ``data``: one to three edits drawn from ``MUTATORS``."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not out:
            break
        rng.choice(MUTATORS)(out, rng)
    return bytes(out)
