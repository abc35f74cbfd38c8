"""Vendor slides through OpenSlide: an Aperio SVS written here (deflate tiles,
so pixels are exact) read through the tile interface."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from service.errors import InvalidInput
from service.pipeline.payload import TileRef
from service.pipeline.sources import InMemorySource, SourceLimits
from service.tiles import TileOpener

LIMITS = SourceLimits(max_image_pixels=50_000_000, max_image_bytes=64 << 20)


def write_svs(path: pathlib.Path, levels: list[np.ndarray]) -> None:
    """Aperio layout: tiled RGB pages, level 0 first, each described as Aperio's are."""
    height, width = levels[0].shape[:2]
    with tifffile.TiffWriter(path) as tif:
        for pixels in levels:
            description = (
                f"Aperio Image Library v12.0.0\r\n{width}x{height} [0,0 {width}x{height}] "
                f"(256x256) -> {pixels.shape[1]}x{pixels.shape[0]}|AppMag = 20|MPP = 0.5"
            )
            tif.write(
                pixels,
                tile=(256, 256),
                compression="zlib",
                photometric="rgb",
                description=description,
                metadata=None,
            )


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, np.ndarray]:
    root = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(5)
    image = np.kron(rng.integers(0, 256, (150, 125, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    write_svs(root / "slide.svs", [image, image[::4, ::4].copy()])  # 1200x1000 and 300x250
    return root, image


def test_svs_regions_and_view_match_the_pixels(slide: tuple[pathlib.Path, np.ndarray]) -> None:
    root, image = slide
    opener = TileOpener(str(root), 32 << 20)
    source = opener(TileRef("slide.svs", level=0), 3, LIMITS)
    memory = InMemorySource(image)
    assert source.format_name == "APERIO" and source.shape == (1200, 1000, 3)
    offsets = tf.constant([[[-20, -20], [500, 600], [1180, 990], [5000, 5000]]], tf.int32)
    np.testing.assert_array_equal(source.patches(offsets, (64, 64)), memory.patches(offsets, (64, 64)))
    np.testing.assert_array_equal(source.low_view((300, 250)), memory.low_view((300, 250)))
    stats = source.read_stats.as_dict()
    assert stats["tiles_decoded"] == stats["cache_misses"] > 0 and stats["bytes_read"] > 0


def test_svs_bytes_read_are_measured_per_region(slide: tuple[pathlib.Path, np.ndarray]) -> None:
    root, _ = slide
    opener = TileOpener(str(root), 32 << 20)
    first = opener(TileRef("slide.svs"), 3, LIMITS)
    opened = first.read_stats.bytes_read  # OpenSlide parses the file and hashes its smallest level
    assert opened > 0
    second = opener(TileRef("slide.svs"), 3, LIMITS)  # the slide stays open: nothing read yet
    assert second.read_stats.bytes_read == 0
    second.patches(tf.constant([[[10, 10]]], tf.int32), (64, 64))  # one grid cell: 2x2 SVS tiles
    with tifffile.TiffFile(root / "slide.svs") as tif:
        counts = tif.pages[0].databytecounts
    tiles = counts[0] + counts[1] + counts[4] + counts[5]
    assert tiles <= second.read_stats.bytes_read < 2 * tiles
    assert second.read_stats.tiles_decoded == 1


def test_svs_view_comes_from_its_pyramid(slide: tuple[pathlib.Path, np.ndarray]) -> None:
    root, image = slide
    source = TileOpener(str(root), 32 << 20)(TileRef("slide.svs"), 1, LIMITS)
    assert source.level_for((150, 125)) == 1
    # 8x8 blocks of one colour: the level-1 pixels image[::4, ::4] area-halve to
    # the same view as the whole image does, after the same gray conversion
    gray = np.asarray(Image.fromarray(image).convert("L"))[..., np.newaxis]
    np.testing.assert_array_equal(source.low_view((150, 125)), InMemorySource(gray).low_view((150, 125)))
    assert source.read_stats.tiles_decoded == 1  # level 1 (300x250) is one grid cell


def test_broken_slide_is_invalid(tmp_path: pathlib.Path) -> None:
    (tmp_path / "broken.svs").write_bytes(b"II*\0" + b"\0" * 100)
    with pytest.raises(InvalidInput, match="not a readable slide"):
        TileOpener(str(tmp_path), 1 << 20)(TileRef("broken.svs"), 3, LIMITS)
