"""Tile references: predict on whole-slide-scale images stored on the server
while reading only the pyramid level of the low-resolution view and the
patches the model looks at.

``add_tile_source`` is the single entry point the server calls at start.
"""

from __future__ import annotations

from service.pipeline.sources import SourceRegistry
from service.tiles.opener import TileOpener
from service.tiles.readers import FORMATS
from service.tiles.stats import TileCounters

DEFAULT_CACHE_BYTES = 256 << 20

__all__ = ["DEFAULT_CACHE_BYTES", "FORMATS", "TileOpener", "add_tile_source"]


def add_tile_source(
    sources: SourceRegistry,
    data_root: str,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    counters: TileCounters | None = None,
    view_oversample: int = 1,
) -> TileOpener | None:
    """Let ``sources`` serve ``tile`` references under ``data_root`` with a decoded-tile cache of
    ``cache_bytes``, counting reads into ``counters`` (the server's metrics), making
    low views from a level ``view_oversample`` times their size (see ``TileSource``).

    An empty ``data_root`` leaves tile references off (they are then refused
    as an unsupported source kind). Raises ValueError if the root is not a
    directory, so a misconfigured server fails at start, not per request.
    Remote URLs are always refused: this server reads local files only.
    """
    if not data_root:
        return None
    opener = TileOpener(data_root, cache_bytes, counters, view_oversample)
    sources.register("tile", opener, formats=tuple(FORMATS))
    return opener
