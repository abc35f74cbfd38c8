"""The reader interface every tile-reference format implements.

A reader exposes an image as pyramid levels cut into a grid of tiles, and
assembles any region of a level from the tiles it touches, each decoded once
and kept in the shared cache. Formats differ only in how one tile is loaded;
a plain PNG is a pyramid of one level made of one tile.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import numpy as np
from PIL import Image

from service.errors import InvalidInput, ServiceError, clip
from service.pipeline.codecs import aligned_empty
from service.tiles.cache import TileCache
from service.tiles.paths import FIELD, ConfinedFile
from service.tiles.stats import Recorder

log = logging.getLogger(__name__)
_PIL_MODES = {1: "L", 3: "RGB"}
# Levels whose pixel size is within this share of another's are taken as that size:
# files round their spacings, and vendor pyramids' downsamples are rarely exact integers.
MPP_TOLERANCE = 0.01
Mpp = tuple[float, float]  # (x, y) micrometres per pixel


@contextlib.contextmanager
def unreadable_is_invalid(what: str, expected: tuple[type[Exception], ...]) -> Iterator[None]:
    """Turn a parser's or decoder's failure on a client's file into InvalidInput.

    The file is at fault, not the server, so the request gets INVALID_ARGUMENT
    and never INTERNAL. ``expected`` are the errors the library raises on bad
    input; any other exception is refused too (a hostile file must not reach
    the client as an internal error) but logged with its traceback, because it
    may be a bug in the library or in the reader.
    """
    try:
        yield
    except ServiceError:
        raise
    except expected as err:
        raise InvalidInput(f"{what}: {clip(str(err))}", field=FIELD) from None
    except Exception as err:
        log.warning("%s: unexpected %s, refused as invalid input", what, type(err).__name__, exc_info=True)
        raise InvalidInput(f"{what}: {type(err).__name__}: {clip(str(err))}", field=FIELD) from None


@dataclasses.dataclass(frozen=True)
class LevelGrid:
    """Size of one pyramid level and of its tiles (edge tiles may be smaller)."""

    height: int
    width: int
    tile_height: int
    tile_width: int

    def __post_init__(self) -> None:
        # sizes come from the file: a zero or negative one is a corrupt file, not a division by zero later
        if min(self.height, self.width, self.tile_height, self.tile_width) <= 0:
            raise InvalidInput(
                f"corrupt image: a level of {self.width}x{self.height} pixels in tiles of "
                f"{self.tile_width}x{self.tile_height}",
                field=FIELD,
            )

    def tile_shape(self, row: int, col: int) -> tuple[int, int]:
        """(height, width) of tile (row, col): edge tiles stop at the level's border."""
        return (
            min(self.tile_height, self.height - row * self.tile_height),
            min(self.tile_width, self.width - col * self.tile_width),
        )


def convert_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(h, w, 1|3|4) uint8 to (h, w, channels) with Pillow's own conversions
    (alpha dropped, ITU-R 601 luma), so a region converts exactly as the
    uploaded image does in the decode stage."""
    if pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    if pixels.shape[-1] == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=-1)
    converted = Image.fromarray(np.ascontiguousarray(pixels), _PIL_MODES[pixels.shape[-1]]).convert("L")
    return np.asarray(converted)[..., np.newaxis]


class Reader(abc.ABC):
    """A pyramid of tiled levels; level 0 is full resolution.

    A reader owns its file once constructed (``close`` releases it); a
    constructor that raises leaves the file to its caller.
    """

    format_name: str  # shown in errors and logs, e.g. "TIFF", "SVS", "PNG"
    base_mpp: Mpp | None = None  # level 0's pixel size, where the file states it

    def __init__(self, file: ConfinedFile, cache: TileCache, grids: list[LevelGrid], channels: int) -> None:
        if not grids:
            raise InvalidInput("corrupt image: no pyramid levels", field=FIELD)
        self.file = file
        self._cache = cache
        self.grids = grids
        self.native_channels = channels

    def close(self) -> None:
        """Release the file and whatever the format holds; once no request uses the reader."""
        self.file.close()

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        return [(g.height, g.width) for g in self.grids]

    def mpp(self, level: int) -> Mpp | None:
        """(x, y) micrometres per pixel of ``level``, or None where the file does not
        state a pixel size: level 0's scaled by the level's size."""
        if self.base_mpp is None:
            return None
        (height, width), (level_height, level_width) = self.level_shapes[0], self.level_shapes[level]
        return self.base_mpp[0] * width / level_width, self.base_mpp[1] * height / level_height

    def level_for_mpp(self, mpp: float) -> int | None:
        """The coarsest level at least as detailed as ``mpp`` micrometres per pixel on
        both axes (level 0 if none is), or None where the file states no pixel size."""
        sizes = [self.mpp(level) for level in range(len(self.grids))]
        if any(size is None for size in sizes):
            return None
        fits = [i for i, size in enumerate(sizes) if size and max(size) <= mpp * (1 + MPP_TOLERANCE)]
        return min(fits, key=lambda i: self.level_shapes[i][0] * self.level_shapes[i][1], default=0)

    @abc.abstractmethod
    def _load_tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        """Decode tile (row, col) of ``level`` as (h, w, native channels) uint8,
        recording bytes read and tiles decoded."""

    def _checked_tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        """The decoded tile, refused unless it is exactly the pixels the grid promises."""
        tile = self._load_tile(level, row, col, recorder)
        expected = (*self.grids[level].tile_shape(row, col), self.native_channels)
        if tile.shape != expected or tile.dtype != np.uint8:
            raise InvalidInput(
                f"corrupt {self.format_name} tile ({row}, {col}) of level {level}: decoded to "
                f"{tile.shape} {tile.dtype}, expected {expected} uint8",
                field=FIELD,
            )
        return tile

    def _tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        tile, hit = self._cache.get(
            (self.file.identity, level, row, col), lambda: self._checked_tile(level, row, col, recorder)
        )
        recorder.record(cache_hits=int(hit), cache_misses=int(not hit))
        return tile

    def read(
        self, level: int, top: int, left: int, height: int, width: int, channels: int, recorder: Recorder
    ) -> np.ndarray:
        """(height, width, channels) uint8 region of ``level``; outside the level = zeros.

        Each tile's part is converted to ``channels`` as it is pasted, into an
        aligned buffer TensorFlow can take as it is: a whole level read for a
        coarse view (39 megapixels at 1/16 of a 100k slide) then costs its
        converted size once, not the native RGB level, a converted copy and
        an aligned copy on top.
        """
        grid = self.grids[level]
        out = aligned_empty((height, width, channels))
        y0, y1 = max(top, 0), min(top + height, grid.height)
        x0, x1 = max(left, 0), min(left + width, grid.width)
        if (y0, y1, x0, x1) != (top, top + height, left, left + width):
            out.fill(0)
        if y0 < y1 and x0 < x1:
            for row in range(y0 // grid.tile_height, (y1 - 1) // grid.tile_height + 1):
                for col in range(x0 // grid.tile_width, (x1 - 1) // grid.tile_width + 1):
                    tile_top, tile_left = row * grid.tile_height, col * grid.tile_width
                    tile = self._tile(level, row, col, recorder)
                    ty0, ty1 = max(y0, tile_top), min(y1, tile_top + tile.shape[0])
                    tx0, tx1 = max(x0, tile_left), min(x1, tile_left + tile.shape[1])
                    out[ty0 - top : ty1 - top, tx0 - left : tx1 - left] = convert_channels(
                        tile[ty0 - tile_top : ty1 - tile_top, tx0 - tile_left : tx1 - tile_left], channels
                    )
        return out
