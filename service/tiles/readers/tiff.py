"""Pyramidal tiled TIFF, BigTIFF and OME-TIFF through tifffile, tile by tile.

tifffile parses the structure (IFDs, SubIFD or OME pyramids, tile offsets);
the tiles themselves are read here with ``pread`` at their offsets and
decoded with the page's own decoder, so exactly the bytes of the tiles a
region touches are read, counted, and nothing else. Striped (untiled) TIFFs
work too, a strip being a tile as wide as the image, within a size bound.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import tifffile

from service.errors import InvalidInput
from service.tiles.cache import TileCache
from service.tiles.paths import FIELD
from service.tiles.readers.base import LevelGrid, Reader
from service.tiles.readers.files import CountingFile, pread_exact
from service.tiles.stats import Recorder

# A strip or tile decoded larger than this is refused: one segment must not cost a whole image.
MAX_SEGMENT_BYTES = 64 << 20
_PHOTOMETRIC = {tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR}


def _level_page(level: tifffile.TiffPageSeries, index: int) -> tifffile.TiffPage:
    """The one page of a pyramid level, checked to be something we can serve."""
    if int(np.prod([n for n, axis in zip(level.shape, level.axes, strict=True) if axis not in "YXS"])) != 1:
        raise InvalidInput(
            f"TIFF series of shape {level.shape} (axes {level.axes}) has several planes; "
            "only single-plane grayscale or RGB images are supported",
            field=FIELD,
        )
    page = level.keyframe
    problems = []
    if page.dtype != np.uint8:
        problems.append(f"sample type {page.dtype} (uint8 needed)")
    if page.samplesperpixel not in (1, 3, 4):
        problems.append(f"{page.samplesperpixel} samples per pixel")
    if page.samplesperpixel > 1 and page.planarconfig != tifffile.PLANARCONFIG.CONTIG:
        problems.append("separate colour planes")
    if page.photometric not in _PHOTOMETRIC:
        problems.append(f"photometric {tifffile.PHOTOMETRIC(page.photometric).name}")
    if page.imagedepth != 1:
        problems.append("volumetric tiles")
    if problems:
        raise InvalidInput(f"TIFF level {index} is not servable: {', '.join(problems)}", field=FIELD)
    return page


def _grid(page: tifffile.TiffPage) -> LevelGrid:
    if page.is_tiled:
        grid = LevelGrid(page.imagelength, page.imagewidth, page.tilelength, page.tilewidth)
    else:
        grid = LevelGrid(
            page.imagelength, page.imagewidth, min(page.rowsperstrip, page.imagelength), page.imagewidth
        )
    if grid.tile_height * grid.tile_width * page.samplesperpixel > MAX_SEGMENT_BYTES:
        raise InvalidInput(
            f"TIFF segments of {grid.tile_width}x{grid.tile_height} pixels are too large to "
            "read by region; save the image tiled (e.g. 256x256 tiles)",
            field=FIELD,
        )
    expected = -(-grid.height // grid.tile_height) * -(-grid.width // grid.tile_width)
    if len(page.dataoffsets) != expected or len(page.databytecounts) != expected:
        raise InvalidInput(
            f"corrupt TIFF: {len(page.dataoffsets)} segment offsets for {expected} segments", field=FIELD
        )
    return grid


class TiffReader(Reader):
    format_name = "TIFF"

    def __init__(self, fd: int, size: int, identity: Hashable, cache: TileCache, recorder: Recorder) -> None:
        self._file = CountingFile(fd, size, recorder)
        try:
            # tifffile reads any binary file object; its annotation asks for IO[bytes]
            self._tif = tifffile.TiffFile(self._file)  # type: ignore[arg-type]
            levels = self._tif.series[0].levels
            self._pages = [_level_page(level, i) for i, level in enumerate(levels)]
        except InvalidInput:
            self._file.close()
            raise
        except Exception as err:  # tifffile raises many types on malformed files
            self._file.close()
            raise InvalidInput(f"not a readable TIFF: {err}", field=FIELD) from None
        for page in self._pages:  # load lazily read tags and build decoders now, not in request threads
            page.dataoffsets, page.databytecounts, page.jpegtables, page.decode  # noqa: B018
        self._file.recorder = None  # structure parsed by the opening request; tiles are counted per read
        if self._tif.is_ome:
            self.format_name = "OME-TIFF"
        elif self._tif.is_bigtiff:
            self.format_name = "BIGTIFF"
        super().__init__(identity, cache, [_grid(p) for p in self._pages], self._pages[0].samplesperpixel)

    def _load_tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        page, grid = self._pages[level], self.grids[level]
        index = row * -(-grid.width // grid.tile_width) + col
        height = min(grid.tile_height, grid.height - row * grid.tile_height)
        width = min(grid.tile_width, grid.width - col * grid.tile_width)
        count, offset = page.databytecounts[index], page.dataoffsets[index]
        if count == 0:  # sparse file: a tile never written is empty
            return np.zeros((height, width, self.native_channels), np.uint8)
        data = pread_exact(self._file.fd, count, offset)
        recorder.record(bytes_read=count, tiles_decoded=1)
        try:
            segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as err:
            raise InvalidInput(f"corrupt TIFF tile {index} of level {level}: {err}", field=FIELD) from None
        if segment is None:
            raise InvalidInput(f"corrupt TIFF tile {index} of level {level}: no pixels", field=FIELD)
        tile = np.asarray(segment).reshape(segment.shape[-3:])
        # edge tiles are stored padded: keep (and account for) only their pixels
        return tile if tile.shape[:2] == (height, width) else tile[:height, :width].copy()
