"""Admission: how many predictions run at once, and how long one may wait for its turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from service.errors import AtCapacity
from service.waiting import within


async def acquire_within(semaphore: asyncio.Semaphore, timeout: float) -> bool:
    """Take ``semaphore`` if it frees within ``timeout`` seconds (at once when
    it is free, even with a zero timeout)."""
    if not semaphore.locked():
        await semaphore.acquire()  # free: returns without suspending
        return True
    try:
        await within(semaphore.acquire(), timeout, undo=lambda _: semaphore.release())
    except TimeoutError:
        return False
    return True


class Admission:
    """``max_concurrent`` prediction slots; a request waits for one at most the
    queue timeout, or its caller's remaining time if that is sooner.

    It lives on the server's event loop: a waiting request is a suspended
    coroutine, not a blocked thread.
    """

    def __init__(self, max_concurrent: int, queue_timeout: float) -> None:
        self.max_concurrent = max_concurrent
        self.queue_timeout = queue_timeout
        self._slots = asyncio.Semaphore(max_concurrent)

    @contextlib.asynccontextmanager
    async def slot(self, time_remaining: float | None) -> AsyncIterator[None]:
        wait = (
            self.queue_timeout
            if time_remaining is None
            else max(0.0, min(self.queue_timeout, time_remaining))
        )
        if not await acquire_within(self._slots, wait):
            raise AtCapacity(
                f"server at capacity: every prediction slot stayed busy for {wait:.2f} s; retry later"
            )
        try:
            yield
        finally:
            self._slots.release()
