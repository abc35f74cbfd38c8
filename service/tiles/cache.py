"""A bounded, shared cache of decoded tiles, least recently used evicted first.

Sized in bytes, not entries: a 512x512 RGB tile and a 256x256 grayscale one
differ 12-fold. Concurrent requests for the same missing tile decode it once:
the first loads, the others wait for its result.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable

import numpy as np


class _Pending:
    """A load in progress that other threads can wait on."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: np.ndarray | None = None
        self.error: BaseException | None = None

    def result(self) -> np.ndarray:
        """Wait for the load: its tile, or its error raised."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.value is not None  # set before ``done`` by a load that did not fail
        return self.value


class TileCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[Hashable, np.ndarray] = collections.OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """The tile under ``key``, loading it on a miss; returns (tile, was_hit).

        A thread that waited for another's load counts as a hit: it decoded
        nothing. A failed load is not cached: every waiter sees its error.
        """
        with self._lock:
            tile = self._entries.get(key)
            if tile is not None:
                self._entries.move_to_end(key)
                return tile, True
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
        if not owner:
            return pending.result(), True
        try:
            loaded = load()
            loaded.setflags(write=False)  # shared between requests: nobody may modify it
            pending.value = loaded
        except BaseException as err:
            pending.error = err
            raise
        finally:
            with self._lock:
                del self._pending[key]
                if pending.error is None:
                    self._insert(key, loaded)
            pending.done.set()
        return loaded, False

    def _insert(self, key: Hashable, tile: np.ndarray) -> None:
        """Store ``tile`` and evict the oldest until under budget (lock held)."""
        if tile.nbytes > self.max_bytes:
            return
        self._entries[key] = tile
        self._bytes += tile.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
