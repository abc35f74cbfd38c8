"""The ``tile`` source opener: confine, open (or reuse) a reader, wrap it for one request."""

from __future__ import annotations

import collections
import os
import threading

from service.pipeline.payload import Payload, TileRef
from service.pipeline.sources import SourceLimits
from service.tiles.cache import TileCache
from service.tiles.paths import open_confined, resolve_root
from service.tiles.readers import open_reader
from service.tiles.readers.base import Reader
from service.tiles.readers.slide import SlideCache
from service.tiles.source import TileSource
from service.tiles.stats import ReadStats, Recorder, TileCounters

MAX_OPEN_READERS = 32


class TileOpener:
    """Opens tile references under one data root, sharing one tile cache.

    Parsed readers are kept (up to ``MAX_OPEN_READERS``, least recently used
    dropped) keyed by the file's identity, so a slide's structure is parsed
    once, while every request still passes the confinement checks on its
    path afresh.
    """

    def __init__(self, data_root: str, cache_bytes: int, counters: TileCounters | None = None) -> None:
        self.root = resolve_root(data_root)
        self.cache = TileCache(cache_bytes)
        self._slide_cache = SlideCache()
        self.totals = ReadStats()
        self._counters = counters
        self._readers: collections.OrderedDict[tuple, Reader] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, payload: Payload, channels: int, limits: SourceLimits) -> TileSource:
        assert isinstance(payload, TileRef)  # registered for ``tile`` payloads only
        recorder = Recorder(ReadStats(), self.totals, self._counters)
        file = open_confined(self.root, payload.path)
        with self._lock:
            reader = self._readers.get(file.identity)
            if reader is not None:
                self._readers.move_to_end(file.identity)
        if reader is not None:
            os.close(file.fd)
        else:
            reader = open_reader(file, self.cache, recorder, limits, self._slide_cache)
            with self._lock:
                self._readers[file.identity] = reader
                while len(self._readers) > MAX_OPEN_READERS:
                    self._readers.popitem(last=False)  # closed once no request uses it any more
        return TileSource(reader, channels, payload.level, limits.max_image_pixels, recorder)
