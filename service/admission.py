"""Admission: how many predictions run at once, and how long one may wait for its turn."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from service.errors import AtCapacity


class Admission:
    """``max_concurrent`` prediction slots; a request waits for one at most the
    queue timeout, or its caller's remaining time if that is sooner."""

    def __init__(self, max_concurrent: int, queue_timeout: float) -> None:
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._queue_timeout = queue_timeout

    @contextlib.contextmanager
    def slot(self, time_remaining: float | None) -> Iterator[None]:
        wait = (
            self._queue_timeout
            if time_remaining is None
            else max(0.0, min(self._queue_timeout, time_remaining))
        )
        if not self._slots.acquire(timeout=wait):
            raise AtCapacity(
                f"server at capacity: every prediction slot stayed busy for {wait:.2f} s; retry later"
            )
        try:
            yield
        finally:
            self._slots.release()
