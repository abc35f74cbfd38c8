"""Single-file vendor whole-slide formats (SVS, NDPI, SCN, ...) through OpenSlide.

OpenSlide reads regions in level-0 coordinates and hides its own tiles, so
this reader lays a fixed grid over each level and reads one grid cell per
``read_region`` call; those cells are what the shared cache holds and what
"tiles decoded" counts. OpenSlide does its own file I/O, synchronously in
the calling thread: the bytes it reads are measured from the kernel's
per-thread read counter around each call.

OpenSlide opens files by name. It is given ``/proc/self/fd/<fd>`` of the
confined descriptor, which the kernel resolves to that very file: nothing
under the data root is looked up by name again. Formats whose companion
files OpenSlide finds by name next to the slide (MRXS, VMS, VMU) cannot be
confined that way and are refused (``NAMED_EXTENSIONS``).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from service.tiles.cache import TileCache
from service.tiles.paths import ConfinedFile
from service.tiles.readers.base import LevelGrid, Mpp, Reader, unreadable_is_invalid
from service.tiles.stats import Recorder, ThreadReadMeter

GRID = 512
EXTENSIONS = (".svs", ".ndpi", ".scn", ".svslide", ".bif")
NAMED_EXTENSIONS = (".mrxs", ".vms", ".vmu")
# OpenSlide's own cache only smooths reads of neighbouring grid cells: the
# decoded cells live in the shared tile cache.
_OPENSLIDE_CACHE_BYTES = 16 << 20


def _mpp(properties: Any) -> Mpp | None:
    """(x, y) micrometres per pixel of level 0, where the slide states them."""
    import openslide

    try:
        x, y = (
            float(properties[name]) for name in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)
        )
    except (KeyError, ValueError):
        return None
    return (x, y) if min(x, y) > 0 and math.isfinite(x + y) else None


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
        self, file: ConfinedFile, cache: TileCache, recorder: Recorder, slide_cache: SlideCache
    ) -> None:
        import openslide

        with (
            unreadable_is_invalid("not a readable slide", (openslide.OpenSlideError,)),
            ThreadReadMeter() as meter,
        ):
            self._slide = openslide.OpenSlide(file.proc_path)
        recorder.record(bytes_read=meter.bytes)
        try:
            with unreadable_is_invalid("not a readable slide", (openslide.OpenSlideError,)):
                self._slide.set_cache(slide_cache.get())
                vendor = self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR)
                self._downsamples = self._slide.level_downsamples
                grids = [LevelGrid(h, w, GRID, GRID) for w, h in self._slide.level_dimensions]
                self.base_mpp = _mpp(self._slide.properties)
            self.format_name = (vendor or "slide").upper()
            super().__init__(file, cache, grids, 3)
        except BaseException:
            self._slide.close()  # the file stays with the caller
            raise

    def close(self) -> None:
        self._slide.close()  # first: OpenSlide may reopen the descriptor's /proc name until then
        super().close()

    def _load_tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        import openslide

        grid, downsample = self.grids[level], self._downsamples[level]
        top, left = row * GRID, col * GRID
        height, width = grid.tile_shape(row, col)
        with (
            unreadable_is_invalid(f"corrupt slide region at level {level}", (openslide.OpenSlideError,)),
            ThreadReadMeter() as meter,
        ):
            region = self._slide.read_region(
                (round(left * downsample), round(top * downsample)), level, (width, height)
            )
        recorder.record(bytes_read=meter.bytes, tiles_decoded=1)
        rgba = np.asarray(region)
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 0  # transparent = outside the scanned area: zeros, as everywhere else
        return rgb
