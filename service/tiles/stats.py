"""Accounting of what tile references cost: bytes read from storage, tiles
decoded, cache hits and misses.

Every read is counted twice: into the request's own ``ReadStats`` (returned
with its source, so the service can report per request) and into the
process totals, which also feed the Prometheus counters of the shared
metrics contract when a server binds them.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Protocol

from prometheus_client import Counter

FIELDS = ("bytes_read", "tiles_decoded", "cache_hits", "cache_misses")
# ReadStats field -> attribute of the server's counters (names of the shared metrics contract)
_COUNTER_OF = {
    "bytes_read": "tile_bytes_read",
    "tiles_decoded": "tiles_decoded",
    "cache_hits": "tile_cache_hits",
    "cache_misses": "tile_cache_misses",
}


class TileCounters(Protocol):
    """The server's counters (``service.metrics.Metrics`` has them)."""

    tile_bytes_read: Counter
    tiles_decoded: Counter
    tile_cache_hits: Counter
    tile_cache_misses: Counter


@dataclasses.dataclass
class ReadStats:
    """Counts of one request (or of the process); safe to add to from several threads."""

    bytes_read: int = 0
    tiles_decoded: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in FIELDS}


class Recorder:
    """Where readers report: the request's stats, the totals and the counters."""

    def __init__(self, request: ReadStats, totals: ReadStats, counters: TileCounters | None) -> None:
        self.request = request
        self._totals = totals
        self._counters = counters

    def record(self, **counts: int) -> None:
        self.request.add(**counts)
        self._totals.add(**counts)
        if self._counters is not None:
            for name, value in counts.items():
                if value:
                    getattr(self._counters, _COUNTER_OF[name]).inc(value)


def _thread_io_path() -> str:
    return f"/proc/self/task/{threading.get_native_id()}/io"


def thread_bytes_read() -> int | None:
    """Bytes this thread has passed through read() system calls (Linux), or
    None where the kernel does not say. Measures libraries that do their own
    I/O (OpenSlide), which read synchronously in the calling thread."""
    try:
        with open(_thread_io_path(), "rb", buffering=0) as proc:
            text = proc.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(b"rchar:"):
            return int(line.split()[1])
    return None


class ThreadReadMeter:
    """Bytes read by the current thread inside a ``with`` block."""

    def __enter__(self) -> ThreadReadMeter:
        self._start = thread_bytes_read()
        self.bytes = 0
        return self

    def __exit__(self, *exc: object) -> None:
        end = thread_bytes_read()
        if self._start is not None and end is not None:
            # the first /proc read itself is counted after its snapshot: subtract it
            self.bytes = max(0, end - self._start - _PROC_READ_BYTES)


def _proc_read_bytes() -> int:
    first, second = thread_bytes_read(), thread_bytes_read()
    return 0 if first is None or second is None else second - first


_PROC_READ_BYTES = _proc_read_bytes() if os.path.exists("/proc/self/task") else 0
