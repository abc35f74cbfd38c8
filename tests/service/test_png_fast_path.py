"""PNG decoding through libdeflate and the op library's row filters
(service/pipeline/png.py): the pixels libpng gives, for every filter type and
layout, and a fall-back (None) for every file that is not whole and plain.

The files are written here, row filters included, so that each of PNG's five
filters is exercised on every layout (Pillow's encoder picks its own)."""

from __future__ import annotations

import io
import struct
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from service.pipeline import codecs, decode, png

# (colour type, bit depth, samples per pixel)
LAYOUTS = {"L": (0, 8, 1), "LA": (4, 8, 2), "RGB": (2, 8, 3), "RGBA": (6, 8, 4), "I;16B": (0, 16, 1)}


def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", value)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filtered(rows: np.ndarray, pixel_bytes: int, filters: list[int]) -> bytes:
    """``rows`` (H, row bytes) filtered as PNG does, row y with ``filters[y]``."""
    out = bytearray()
    prior = np.zeros(rows.shape[1], np.int32)
    for row, kind in zip(rows.astype(np.int32), filters, strict=True):
        left = np.concatenate([np.zeros(pixel_bytes, np.int32), row[:-pixel_bytes]])
        up_left = np.concatenate([np.zeros(pixel_bytes, np.int32), prior[:-pixel_bytes]])
        predicted = [0 * row, left, prior, (left + prior) // 2, _paeth(left, prior, up_left)][kind]
        out += bytes([kind]) + ((row - predicted) % 256).astype(np.uint8).tobytes()
        prior = row
    return bytes(out)


def png_file(
    pixels: np.ndarray,
    mode: str,
    filters: list[int],
    *,
    split: int = 3,
    before: bytes = b"",
    between: bytes = b"",
    interlace: int = 0,
    scanlines: bytes | None = None,
) -> bytes:
    colour, depth, bands = LAYOUTS[mode]
    height, width = pixels.shape[:2]
    stored = pixels.astype(">u2") if depth == 16 else pixels
    rows = np.frombuffer(stored.tobytes(), np.uint8).reshape(height, -1)
    data = zlib.compress(filtered(rows, bands * depth // 8, filters) if scanlines is None else scanlines)
    step = -(-len(data) // split)
    idat = [chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step)]
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + before
        + idat[0]
        + between
        + b"".join(idat[1:])
        + chunk(b"IEND", b"")
    )


def picture(mode: str, height: int = 23, width: int = 29, seed: int = 0) -> np.ndarray:
    """Smooth ramps with noise and flat runs: every filter meets every case."""
    rng = np.random.default_rng(seed)
    _, depth, bands = LAYOUTS[mode]
    top = 65536 if depth == 16 else 256
    ramp = np.add.outer(np.arange(height) * 7, np.arange(width) * 5)[..., None] * (1 + np.arange(bands))
    values = (ramp + rng.integers(0, 9, (height, width, bands))) % top
    values[height // 3 : height // 2] = top - 1
    dtype = np.uint16 if depth == 16 else np.uint8
    return values.astype(dtype).reshape((height, width) if bands == 1 else (height, width, bands))


def fast(data: bytes, like: np.ndarray) -> np.ndarray | None:
    return png.decode(data, codecs.aligned_empty(like.shape, like.dtype))


@pytest.mark.parametrize("mode", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", range(5), ids=["none", "sub", "up", "average", "paeth"])
def test_each_filter_on_each_layout_gives_libpngs_pixels(mode, kind):
    pixels = picture(mode)
    data = png_file(pixels, mode, [kind] * pixels.shape[0])
    got = fast(data, pixels)
    assert got is not None
    np.testing.assert_array_equal(got, pixels)
    np.testing.assert_array_equal(got, imagecodecs.png_decode(data))


@pytest.mark.parametrize("mode", sorted(LAYOUTS))
def test_mixed_filters_and_edge_sizes(mode):
    for height, width in ((1, 1), (1, 40), (40, 1), (17, 3)):
        pixels = picture(mode, height, width, seed=height * width)
        data = png_file(pixels, mode, [(y * 3 + 1) % 5 for y in range(height)], split=1)
        got = fast(data, pixels)
        assert got is not None, (height, width)
        np.testing.assert_array_equal(got, pixels)


def test_decode_image_takes_the_fast_path_and_matches_pillow():
    pixels = picture("RGB", 40, 50)
    data = png_file(pixels, "RGB", [y % 5 for y in range(40)], before=chunk(b"tEXt", b"k\0v"))
    assert fast(data, pixels) is not None
    for channels in (1, 3):
        want = np.asarray(decode.eight_bit(Image.open(io.BytesIO(data)), channels))
        got = decode.decode_image(data, channels, 10**6, 1 << 20)
        np.testing.assert_array_equal(got.reshape(want.shape), want)


def _corrupt_crc(data: bytes, kind: bytes) -> bytes:
    at = data.index(kind) - 4
    (length,) = struct.unpack_from(">I", data, at)
    end = at + 8 + length
    return data[:end] + bytes([data[end] ^ 1]) + data[end + 1 :]


PIXELS = picture("L")
GOOD = png_file(PIXELS, "L", [4] * PIXELS.shape[0])
TEXT = chunk(b"tEXt", b"a\0b")
NOT_PLAIN = {
    "interlaced": png_file(PIXELS, "L", [0] * 23, interlace=1),
    "IDAT CRC": _corrupt_crc(GOOD, b"IDAT"),
    "IHDR CRC": _corrupt_crc(GOOD, b"IHDR"),
    "ancillary chunk CRC": _corrupt_crc(png_file(PIXELS, "L", [0] * 23, before=TEXT), b"tEXt"),
    "chunk between IDATs": png_file(PIXELS, "L", [0] * 23, between=TEXT),
    "unknown critical chunk": png_file(PIXELS, "L", [0] * 23, before=chunk(b"QQQQ", b"")),
    "palette in a grey image": png_file(PIXELS, "L", [0] * 23, before=chunk(b"PLTE", b"\0\0\0")),
    "unknown filter type": png_file(PIXELS, "L", [0] * 23, scanlines=b"\5" * (23 * 30)),
    "stream one row short": png_file(PIXELS, "L", [0] * 23, scanlines=b"\0" * (22 * 30)),
    "stream one byte long": png_file(PIXELS, "L", [0] * 23, scanlines=b"\0" * (23 * 30 + 1)),
    "bytes after IEND": GOOD + b"\0",
    "no IEND": GOOD[:-12],
    "cut inside a chunk": GOOD[:60],
    "no image data": b"\x89PNG\r\n\x1a\n" + GOOD[8:33] + chunk(b"IEND", b""),
    "not a PNG": b"GIF89a" + GOOD[6:],
}


def test_countless_tiny_chunks_are_left_to_libpng():
    """Chunks are walked in Python: past 4096 (or one per 4 KB) the file goes to libpng."""
    pixels = picture("L", 100, 100)
    many = png_file(pixels, "L", [1] * 100, split=5000)
    assert many.count(b"IDAT") > 4096 and len(many) < 4096 * 4096
    assert fast(many, pixels) is None
    np.testing.assert_array_equal(decode.decode_image(many, 1, 10**6, 1 << 20)[..., 0], pixels)
    fewer = png_file(pixels, "L", [1] * 100, split=4000)
    assert fewer.count(b"IDAT") < 4096
    np.testing.assert_array_equal(fast(fewer, pixels), pixels)


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_files_that_are_not_whole_and_plain_fall_back(name):
    assert fast(NOT_PLAIN[name], PIXELS) is None


def test_the_good_file_those_come_from_is_taken():
    np.testing.assert_array_equal(fast(GOOD, PIXELS), PIXELS)


def test_a_buffer_of_another_layout_is_not_written():
    assert png.decode(GOOD, codecs.aligned_empty((23, 29, 3))) is None
    assert png.decode(GOOD, codecs.aligned_empty((23, 29), np.uint16)) is None


@pytest.mark.parametrize("name", ["unknown filter type", "stream one row short", "IDAT CRC"])
def test_decode_image_gives_pillows_verdict_on_what_falls_back(name):
    """A refusal by the fast path leaves the verdict to libpng, then Pillow, as before."""
    from tests.service.test_decode_backends import assert_same

    for channels in (1, 3):
        assert_same(NOT_PLAIN[name], channels, name)
