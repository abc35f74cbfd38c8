"""Waiting with a time limit without losing a cancellation.

``asyncio.wait_for`` before Python 3.12 can swallow the caller's
cancellation when the awaited operation completes at the same moment (a
cancelled gRPC call ends its request stream just as its handler is
cancelled), so a cancelled upload would carry on as a truncated image.
``within`` runs the operation as a task of its own and waits for it with
``asyncio.wait``, which never swallows the waiter's cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float, undo: Callable[[T], None] | None = None) -> T:
    """The result of ``awaitable``, or TimeoutError after ``timeout`` seconds.

    If the waiter is cancelled, or times out, just as the operation
    succeeded, ``undo`` gets the result (to give back a semaphore permit, say).
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.0))
    except asyncio.CancelledError:
        _abandon(task, undo)
        raise
    if not done:
        _abandon(task, undo)
        raise TimeoutError
    return task.result()


def _abandon(task: asyncio.Future[T], undo: Callable[[T], None] | None) -> None:
    if not task.done():
        task.cancel()
        if undo is not None:
            task.add_done_callback(lambda t: _undo_success(t, undo))
    else:
        _undo_success(task, undo)


def _undo_success(task: asyncio.Future[T], undo: Callable[[T], None] | None) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if undo is not None and task.exception() is None:
            undo(task.result())
