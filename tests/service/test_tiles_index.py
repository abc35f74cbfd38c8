"""A TIFF level's tile index is read entry by entry as tiles are loaded, not
whole when the file is opened: a region costs the structure, two index
entries a tile and the tiles' bytes, far less than the index of a level of
thousands of tiles; the pixels are tifffile's own, and a corrupt index entry
is refused as the whole index was."""

from __future__ import annotations

import gc
import pathlib
import struct
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout
from model_ops.datasets.writers import write_tiff
from service.errors import ServiceError
from service.pipeline.codecs import ALIGNMENT
from service.pipeline.payload import TileRef
from service.pipeline.sources import SourceLimits
from service.tiles import TileOpener
from service.tiles.paths import DataRoot
from service.tiles.readers.tiff import MAX_SEGMENT_BYTES, check_segments
from service.tiles.stats import ReadStats, Recorder

LIMITS = SourceLimits(max_image_pixels=50_000_000, max_image_bytes=64 << 20)
TILE = 64
SIDE = 5000  # 79 x 79 = 6241 level-0 tiles of 64 px: a 62 KB index (LONG8 offsets, SHORT counts)
PATCH = (50, 50)
Forge = Callable[[bytearray, tifffile.TiffTag, tifffile.TiffTag], None]
# corners of patches across tile borders, at the image's bottom-right edge and at its origin
CORNERS = [[0, 0], [TILE - 10, 3 * TILE - 20], [2500, 1290], [SIDE - PATCH[0], SIDE - PATCH[1]]]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """``digits.tif``: a pyramidal zlib-tiled digit canvas; ``rgb.tif``: one JPEG-tiled RGB level."""
    root = tmp_path_factory.mktemp("index")
    write_tiff(make_layout(CanvasSpec(height=SIDE, width=SIDE), "test", 3, 0), root / "digits.tif", tile=TILE)
    side = 40 * TILE - 24  # an edge row and column of partial tiles
    ramp = np.add.outer(np.arange(side), np.arange(side)) % 256
    rgb = np.stack([ramp, ramp.T, 255 - ramp], axis=-1).astype(np.uint8)
    tifffile.imwrite(root / "rgb.tif", rgb, tile=(TILE, TILE), compression="jpeg", photometric="rgb")
    return root


def level0(path: pathlib.Path) -> tifffile.TiffPage:
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].keyframe
        assert page.is_tiled and page.compression != 1
        return page


def test_a_region_reads_index_entries_not_the_whole_index(root: pathlib.Path) -> None:
    page = level0(root / "digits.tif")
    offsets, counts = page.tags["TileOffsets"], page.tags["TileByteCounts"]
    index_bytes = offsets.valuebytecount + counts.valuebytecount
    assert len(page.dataoffsets) == 79 * 79 and index_bytes > 60_000
    source = TileOpener(str(root), 32 << 20)(TileRef("digits.tif", level=0), 1, LIMITS)
    opened = source.read_stats.bytes_read
    source.patches(tf.constant([CORNERS], tf.int32), PATCH)
    stats = source.read_stats.as_dict()
    columns = -(-SIDE // TILE)
    touched = {
        (row, col)
        for y, x in CORNERS
        for row in range(y // TILE, (y + PATCH[0] - 1) // TILE + 1)
        for col in range(x // TILE, (x + PATCH[1] - 1) // TILE + 1)
    }
    tiles = sum(page.databytecounts[row * columns + col] for row, col in touched)
    assert stats["tiles_decoded"] == len(touched)
    # every byte read is counted: the tiles, and an offset and a byte count a tile
    entry_bytes = (offsets.valuebytecount + counts.valuebytecount) // len(page.dataoffsets)
    assert stats["bytes_read"] - opened == tiles + entry_bytes * len(touched)
    assert stats["bytes_read"] < index_bytes / 5  # the structure is a few kilobytes


def test_an_open_reader_does_not_hold_the_index(tmp_path: pathlib.Path) -> None:
    """tifffile parses each level's whole index (as zeros, unread) with its page; an open
    reader must not keep it: a server caches readers, and at 16 bytes a tile a 100k x 100k
    slide's index is 3.4 MB a reader, which once grew a server past 1.6 GB on 60 slides."""
    held = {}
    for side in (2048, 8192):  # 1365 and 21845 tiles of 64 px over all levels
        layout = make_layout(CanvasSpec(height=side, width=side, n_noise=0), "test", 3, 0)
        write_tiff(layout, tmp_path / f"{side}.tif", tile=TILE)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            source = TileOpener(str(tmp_path), 1 << 20)(TileRef(f"{side}.tif"), 1, LIMITS)
            held[side] = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert source.shape[:2] == (side, side)
    # the index of the 20480 more tiles is 320 KB; two more levels' structure is a few KB
    assert held[8192] - held[2048] < 64 << 10, held


@pytest.mark.parametrize(("name", "channels"), [("digits.tif", 1), ("rgb.tif", 3)])
def test_pixels_are_tifffiles_own(root: pathlib.Path, name: str, channels: int) -> None:
    expected = tifffile.imread(root / name, level=0)
    expected = expected.reshape(*expected.shape[:2], channels)
    source = TileOpener(str(root), 32 << 20)(TileRef(name, level=0), channels, LIMITS)
    height, width = source.shape[:2]
    corners = [[min(y, height - PATCH[0]), min(x, width - PATCH[1])] for y, x in CORNERS]
    patches = np.asarray(source.patches(tf.constant([corners], tf.int32), PATCH))[0]
    for (y, x), patch in zip(corners, patches, strict=True):
        np.testing.assert_array_equal(patch, expected[y : y + PATCH[0], x : x + PATCH[1]])


def test_the_slide_precheck_leaves_no_index_behind(tmp_path: pathlib.Path) -> None:
    """``check_segments`` (run before OpenSlide opens a TIFF-based slide) parses the file
    with tifffile and closes it; what it leaves in the TiffFile's reference cycles, until
    a full garbage collection, must not include the pages' whole tile index."""
    zeros = np.zeros((8192, 8192), np.uint8)  # 16384 tiles of 64 px: a 256 KB index
    tifffile.imwrite(tmp_path / "one.tif", zeros, tile=(TILE, TILE), compression="zlib", bigtiff=True)
    file = DataRoot(str(tmp_path)).open("one.tif")
    gc.disable()
    tracemalloc.start()
    try:
        check_segments(file, Recorder(ReadStats(), ReadStats(), None))
        left = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        gc.enable()
        file.close()
    assert left < 64 << 10, left


def test_a_level_converts_tile_by_tile(root: pathlib.Path) -> None:
    """A whole RGB level read for a grey model equals Pillow's conversion of the whole
    image, and costs its grey size, not the RGB level plus converted copies (a coarse
    view of a 100k slide reads 39 megapixels)."""
    expected = np.asarray(Image.fromarray(tifffile.imread(root / "rgb.tif")).convert("L"))
    source = TileOpener(str(root), 0)(TileRef("rgb.tif", level=0), 1, LIMITS)
    reader, (height, width) = source._reader, source.shape[:2]
    tracemalloc.start()
    try:
        pixels = reader.read(0, 0, 0, height, width, 1, source._recorder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(pixels[..., 0], expected)
    assert pixels.ctypes.data % ALIGNMENT == 0  # TensorFlow takes it as it is
    assert peak < 1.2 * height * width, (peak, height * width)


def forged(root: pathlib.Path, tmp_path: pathlib.Path, forge: Forge) -> str:
    """A copy of ``digits.tif`` in ``tmp_path`` whose level-0 index ``forge`` changes."""
    data = bytearray((root / "digits.tif").read_bytes())
    tags = level0(root / "digits.tif").tags
    forge(data, tags["TileOffsets"], tags["TileByteCounts"])
    (tmp_path / "forged.tif").write_bytes(bytes(data))
    return "forged.tif"


# BigTIFF entries: tag (2 bytes), type (2), count (8), value or value offset (8)
def first_offset_beyond_the_file(data: bytearray, offsets: tifffile.TiffTag, _: tifffile.TiffTag) -> None:
    struct.pack_into("<" + offsets.dataformat[-1], data, offsets.valueoffset, len(data))


def counts_over_the_segment_bound(data: bytearray, _: tifffile.TiffTag, counts: tifffile.TiffTag) -> None:
    """The byte counts moved to a LONG8 array at the end of the file, each over ``MAX_SEGMENT_BYTES``."""
    struct.pack_into("<HQQ", data, counts.offset + 2, 16, counts.count, len(data))
    data.extend(struct.pack(f"<{counts.count}Q", *[MAX_SEGMENT_BYTES + 1] * counts.count))


def offsets_past_the_end(data: bytearray, offsets: tifffile.TiffTag, _: tifffile.TiffTag) -> None:
    struct.pack_into("<Q", data, offsets.offset + 12, len(data) - 800)


def fewer_counts_than_tiles(data: bytearray, _: tifffile.TiffTag, counts: tifffile.TiffTag) -> None:
    struct.pack_into("<Q", data, counts.offset + 4, counts.count - 1)


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (first_offset_beyond_the_file, "26 bytes at offset .* lie beyond its"),
        (counts_over_the_segment_bound, f"claims {MAX_SEGMENT_BYTES + 1} bytes"),
        (offsets_past_the_end, "0 segment offsets for 6241 segments"),  # tifffile drops the entry
        (fewer_counts_than_tiles, "segment offsets for 6241 segments"),
    ],
)
def test_a_corrupt_index_is_invalid_argument(
    root: pathlib.Path, tmp_path: pathlib.Path, forge: Forge, message: str
) -> None:
    name = forged(root, tmp_path, forge)
    with pytest.raises(ServiceError, match=message) as info:
        source = TileOpener(str(tmp_path), 32 << 20)(TileRef(name, level=0), 1, LIMITS)
        source.patches(tf.constant([[[0, 0]]], tf.int32), PATCH)
    assert info.value.code.name == "INVALID_ARGUMENT"
