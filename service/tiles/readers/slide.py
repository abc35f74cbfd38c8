"""Vendor whole-slide formats (SVS, NDPI, MRXS, ...) through OpenSlide.

OpenSlide reads regions in level-0 coordinates and hides its own tiles, so
this reader lays a fixed grid over each level and reads one grid cell per
``read_region`` call; those cells are what the shared cache holds and what
"tiles decoded" counts. OpenSlide does its own file I/O, synchronously in
the calling thread: the bytes it reads are measured from the kernel's
per-thread read counter around each call.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.tiles.cache import TileCache
from service.tiles.paths import FIELD
from service.tiles.readers.base import LevelGrid, Reader
from service.tiles.readers.files import CountingFile
from service.tiles.stats import Recorder, ThreadReadMeter

GRID = 512
EXTENSIONS = (".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
# OpenSlide's own cache only smooths reads of neighbouring grid cells: the
# decoded cells live in the shared tile cache.
_OPENSLIDE_CACHE_BYTES = 16 << 20


class SlideCache:
    """One OpenSlide cache shared by the slides of one tile opener, made on
    first use (OpenSlide itself is imported only when a slide is opened)."""

    def __init__(self, capacity: int = _OPENSLIDE_CACHE_BYTES) -> None:
        self._capacity = capacity
        self._cache: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        import openslide

        with self._lock:
            if self._cache is None:
                self._cache = openslide.OpenSlideCache(self._capacity)
            return self._cache


class SlideReader(Reader):
    def __init__(
        self,
        fd: int,
        size: int,
        path: str,
        identity: Hashable,
        cache: TileCache,
        recorder: Recorder,
        slide_cache: SlideCache,
    ) -> None:
        import openslide

        self._file = CountingFile(fd, size, None)  # held open: the file cannot be swapped under us
        try:
            with ThreadReadMeter() as meter:
                self._slide = openslide.OpenSlide(path)
        except openslide.OpenSlideError as err:
            raise InvalidInput(f"not a readable slide: {err}", field=FIELD) from None
        recorder.record(bytes_read=meter.bytes)
        self._slide.set_cache(slide_cache.get())
        self.format_name = (self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR) or "slide").upper()
        self._downsamples = self._slide.level_downsamples
        grids = [LevelGrid(h, w, GRID, GRID) for w, h in self._slide.level_dimensions]
        super().__init__(identity, cache, grids, 3)

    def _load_tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        import openslide

        grid, downsample = self.grids[level], self._downsamples[level]
        top, left = row * GRID, col * GRID
        size = (min(GRID, grid.width - left), min(GRID, grid.height - top))
        try:
            with ThreadReadMeter() as meter:
                region = self._slide.read_region(
                    (round(left * downsample), round(top * downsample)), level, size
                )
        except openslide.OpenSlideError as err:
            raise InvalidInput(f"corrupt slide region at level {level}: {err}", field=FIELD) from None
        recorder.record(bytes_read=meter.bytes, tiles_decoded=1)
        rgba = np.asarray(region)
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 0  # transparent = outside the scanned area: zeros, as everywhere else
        return rgb
