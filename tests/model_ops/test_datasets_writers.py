"""Canvas writers: round trips, pyramid levels, and no full-size buffer for huge canvases."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
import tifffile
from PIL import Image

from model_ops.datasets.megapixel_digits import (
    CanvasSpec,
    level_shape,
    make_layout,
    render_canvas,
    render_region,
)
from model_ops.datasets.writers import pyramid_factors, write_canvas, write_tiff


@pytest.fixture(scope="module")
def layout():
    return make_layout(CanvasSpec(height=1000, width=1300, n_noise=40), "test", 9, 3)


def test_png_round_trip(layout, tmp_path):
    write_canvas(layout, tmp_path / "c.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), render_canvas(layout)[..., 0])


def test_jpeg_is_close(layout, tmp_path):
    write_canvas(layout, tmp_path / "c.jpg")
    decoded = np.asarray(Image.open(tmp_path / "c.jpg")).astype(np.float64)
    assert decoded.shape == (1000, 1300)
    assert np.abs(decoded - render_canvas(layout)[..., 0]).mean() < 2.0


def test_jpeg_refuses_oversized_canvas(tmp_path):
    huge = make_layout(CanvasSpec(height=70000, width=100, n_noise=0), "train", 0, 0)
    with pytest.raises(ValueError, match="65500"):
        write_canvas(huge, tmp_path / "c.jpg")


def test_unknown_format(layout, tmp_path):
    with pytest.raises(ValueError, match="unknown image format"):
        write_canvas(layout, tmp_path / "c.bmp")


def test_tiff_pyramid_levels(layout, tmp_path):
    factors = write_tiff(layout, tmp_path / "c.tif", tile=256)
    assert factors == pyramid_factors(1000, 1300, 256) == [1, 2, 4, 8]
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        assert tif.is_bigtiff
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [level_shape(1000, 1300, f) for f in factors]
        assert np.array_equal(levels[0].asarray(), render_canvas(layout)[..., 0])
        for level, factor in zip(levels[1:], factors[1:], strict=True):
            expected = render_region(layout, 0, 0, *level_shape(1000, 1300, factor), factor=factor)
            assert np.array_equal(level.asarray(), expected)


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_objects_across_tile_borders_reach_every_tile_they_touch(compression, tmp_path):
    """Empty tiles are written as one shared encoded tile: every tile an object
    touches, at every level, must still be rendered, including objects across
    tile corners and in the partial tiles at the right and bottom edges."""
    base = make_layout(CanvasSpec(height=700, width=900, n_noise=5), "test", 9, 1)
    ys, xs = np.array([0, 240, 500, 672, 10]), np.array([0, 240, 1, 500, 872])  # corners, edges
    layout = dataclasses.replace(base, ys=ys, xs=xs, classes=base.classes[:5], sprites=base.sprites[:5])
    write_tiff(layout, tmp_path / "c.tif", tile=256, compression=compression)
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        levels = tif.series[0].levels
        for level, factor in zip(levels, pyramid_factors(700, 900, 256), strict=True):
            expected = render_region(layout, 0, 0, *level_shape(700, 900, factor), factor=factor)
            written = level.asarray().astype(np.int64)
            if compression == "zlib":
                assert np.array_equal(written, expected)
            else:  # lossy, but every object's ink is there: no touched tile was written empty
                assert np.abs(written - expected).max() < 48
                assert written.sum() == pytest.approx(expected.sum(), rel=0.02)


def test_huge_tiff_is_written_tile_by_tile(tmp_path):
    """A 24000x24000 canvas (576 MB of pixels) is written with a few MB of memory."""
    spec = CanvasSpec(height=24000, width=24000, n_noise=400)
    big = make_layout(spec, "train", 0, 0)
    tracemalloc.start()
    try:
        write_tiff(big, tmp_path / "big.tif", tile=512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40e6, f"peak traced memory {peak / 1e6:.1f} MB"
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        page = tif.pages[0]
        assert page.shape == (24000, 24000)
        tiles_across = -(-24000 // 512)
        for y, x in zip(big.ys[:5], big.xs[:5], strict=True):  # the tiles holding the digits
            top, left = int(y) // 512 * 512, int(x) // 512 * 512
            index = (top // 512) * tiles_across + left // 512
            tif.filehandle.seek(page.dataoffsets[index])
            tile = page.decode(tif.filehandle.read(page.databytecounts[index]), index)[0][0, :, :, 0]
            h, w = min(512, 24000 - top), min(512, 24000 - left)
            assert np.array_equal(tile[:h, :w], render_region(big, top, left, h, w))
            assert tile.any()
