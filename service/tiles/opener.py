"""The ``tile`` source opener: confine, open (or reuse) a reader, wrap it for one request."""

from __future__ import annotations

import collections
import threading
import weakref

from service.pipeline.payload import Payload, TileRef
from service.pipeline.sources import SourceLimits
from service.tiles.cache import TileCache
from service.tiles.paths import ConfinedFile, DataRoot
from service.tiles.readers import open_reader
from service.tiles.readers.base import Reader
from service.tiles.readers.slide import SlideCache
from service.tiles.source import TileSource
from service.tiles.stats import ReadStats, Recorder, TileCounters

MAX_OPEN_READERS = 32


class _Shared:
    """A cached reader and how many requests are using it."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.users = 0
        self.evicted = False


class TileOpener:
    """Opens tile references under one data root, sharing one tile cache.

    Parsed readers are kept (up to ``MAX_OPEN_READERS``, least recently used
    dropped) keyed by the file's identity, so a slide's structure is parsed
    once, while every request still passes the confinement checks on its
    path afresh. A dropped reader is closed as soon as no request uses it:
    each ``TileSource`` holds its reader until the source is collected.
    """

    def __init__(
        self,
        data_root: str | DataRoot,
        cache_bytes: int,
        counters: TileCounters | None = None,
        view_oversample: int = 1,
    ) -> None:
        self.root = data_root if isinstance(data_root, DataRoot) else DataRoot(data_root)
        self.cache = TileCache(cache_bytes)
        self._slide_cache = SlideCache()
        self.totals = ReadStats()
        self._counters = counters
        self._view_oversample = view_oversample
        self._readers: collections.OrderedDict[tuple, _Shared] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, payload: Payload, channels: int, limits: SourceLimits) -> TileSource:
        assert isinstance(payload, TileRef)  # registered for ``tile`` payloads only
        recorder = Recorder(ReadStats(), self.totals, self._counters)
        # a directory is a DICOM series; open_reader refuses any other
        shared = self._acquire(self.root.open(payload.path, directories=True), recorder, limits)
        try:
            source = TileSource(
                shared.reader,
                channels,
                payload.level,
                limits.max_image_pixels,
                recorder,
                self._view_oversample,
            )
        except BaseException:
            self._release(shared)
            raise
        weakref.finalize(source, self._release, shared)
        return source

    def _acquire(self, file: ConfinedFile, recorder: Recorder, limits: SourceLimits) -> _Shared:
        """The shared reader of ``file``, counted as used once more; ``file`` is
        closed or owned by a reader on every path out."""
        with self._lock:
            shared = self._readers.get(file.identity)
            if shared is not None:
                self._readers.move_to_end(file.identity)
                shared.users += 1
        if shared is not None:
            file.close()
            return shared
        try:
            reader = open_reader(file, self.cache, recorder, limits, self._slide_cache)
        except BaseException:
            file.close()
            raise
        unused = []
        with self._lock:
            shared = self._readers.get(file.identity)
            if shared is None:
                shared = self._readers[file.identity] = _Shared(reader)
                while len(self._readers) > MAX_OPEN_READERS:
                    _, oldest = self._readers.popitem(last=False)
                    oldest.evicted = True
                    if oldest.users == 0:
                        unused.append(oldest.reader)
            else:  # another request opened the same file meanwhile: share its reader
                self._readers.move_to_end(file.identity)
                unused.append(reader)
            shared.users += 1
        for idle in unused:
            idle.close()
        return shared

    def _release(self, shared: _Shared) -> None:
        """A request is done with ``shared``: close it if it was evicted and was the last user."""
        with self._lock:
            shared.users -= 1
            last = shared.evicted and shared.users == 0
        if last:
            shared.reader.close()
