"""Microns per pixel of every tile format that states them, and levels chosen by them."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tifffile

from service.pipeline.payload import TileRef
from service.pipeline.sources import SourceLimits
from service.tiles import TileOpener
from service.tiles.readers.base import Reader
from tests.service.test_tiles_slide import write_svs

LIMITS = SourceLimits(max_image_pixels=50_000_000, max_image_bytes=64 << 20)
PIXELS = np.random.default_rng(3).integers(0, 256, (256, 384, 3), np.uint8)


def reader(root: pathlib.Path, name: str) -> Reader:
    return TileOpener(str(root), 1 << 22)(TileRef(name), 3, LIMITS)._reader


def write_pyramid(path: pathlib.Path, **options: object) -> None:
    """Two levels in SubIFDs, level 0 carrying ``options`` (resolution tags, OME metadata)."""
    with tifffile.TiffWriter(path, ome=path.name.endswith(".ome.tif")) as tif:
        tif.write(PIXELS, tile=(64, 64), subifds=1, **options)
        tif.write(PIXELS[::2, ::2].copy(), tile=(64, 64), subfiletype=1)


def test_tiff_resolution_tags_give_microns_per_pixel(tmp_path: pathlib.Path) -> None:
    write_pyramid(tmp_path / "cm.tif", resolution=(4000, 2000), resolutionunit="CENTIMETER")
    write_pyramid(tmp_path / "inch.tif", resolution=(50800, 50800), resolutionunit="INCH")
    write_pyramid(tmp_path / "none.tif", resolution=(300, 300), resolutionunit="NONE")
    write_pyramid(tmp_path / "plain.tif")
    cm = reader(tmp_path, "cm.tif")
    assert cm.mpp(0) == pytest.approx((2.5, 5.0)) and cm.mpp(1) == pytest.approx((5.0, 10.0))
    assert reader(tmp_path, "inch.tif").mpp(0) == pytest.approx((0.5, 0.5))
    assert reader(tmp_path, "none.tif").mpp(0) is None  # a resolution without a unit is no size
    unknown = reader(tmp_path, "plain.tif")
    assert unknown.mpp(0) is None and unknown.level_for_mpp(1.0) is None


def test_ome_physical_sizes_give_microns_per_pixel(tmp_path: pathlib.Path) -> None:
    write_pyramid(tmp_path / "um.ome.tif", metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    write_pyramid(
        tmp_path / "nm.ome.tif",
        metadata={
            "PhysicalSizeX": 400,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 400,
            "PhysicalSizeYUnit": "nm",
        },
    )
    ome = reader(tmp_path, "um.ome.tif")
    assert ome.format_name == "OME-TIFF"
    assert ome.mpp(0) == pytest.approx((0.25, 0.25)) and ome.mpp(1) == pytest.approx((0.5, 0.5))
    assert [ome.level_for_mpp(mpp) for mpp in (0.1, 0.25, 0.4, 0.5, 2.0)] == [0, 0, 0, 1, 1]
    assert reader(tmp_path, "nm.ome.tif").mpp(0) == pytest.approx((0.4, 0.4))


def test_openslide_properties_give_microns_per_pixel(tmp_path: pathlib.Path) -> None:
    write_svs(tmp_path / "slide.svs", [PIXELS, PIXELS[::4, ::4].copy()])  # "MPP = 0.5"
    slide = reader(tmp_path, "slide.svs")
    assert slide.mpp(0) == pytest.approx((0.5, 0.5)) and slide.mpp(1) == pytest.approx((2.0, 2.0))
    assert slide.level_for_mpp(1.9) == 0 and slide.level_for_mpp(2.0) == 1
