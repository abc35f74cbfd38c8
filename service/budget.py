"""Per-request limits that only the pipeline can measure: memory and time.

A request's cost is not its size on the wire: a 583 KB PNG can decode to
600 MB. So the pipeline declares what it is about to allocate, from the
image header and before decoding, and the request's :class:`RequestBudget`
(1) refuses the work when even a fast decode cannot finish before the
caller's deadline, and (2) reserves the bytes against the server-wide
:class:`MemoryBudget`, waiting for room within the deadline.

The data plane binds one RequestBudget to the thread that runs a request
(:func:`bound`); the pipeline calls :func:`before_decode`, which is a no-op
outside the server (a library user decoding in process has no budget).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable, Iterator

from service.errors import AtCapacity, DeadlineExceeded, TooLarge

log = logging.getLogger(__name__)

# Fastest decode rate seen on any format here (raw tensors aside): the
# estimate must never refuse a request that could have finished in time, so
# it assumes the best case. Measured: bench/results/reliability.md.
FASTEST_SECONDS_PER_PIXEL = 1.0e-9

# The client's own deadline timer cancels a moment before the server's fires:
# a call cancelled this close to its deadline counts as DEADLINE_EXCEEDED.
DEADLINE_SLACK = 0.25  # seconds

# Once this much has been released since the last trim, free memory is
# handed back to the operating system.
TRIM_AFTER_BYTES = 64 << 20


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or nothing where the C library lacks it."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class MemoryBudget:
    """Bytes the server's requests may hold at once for decoded pixels.

    Reservations wait (thread-safe, FIFO-ish through a condition) until they
    fit; a reservation larger than the whole budget can never fit and is
    refused at once.
    """

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self.in_use = 0
        self.refused_since: float | None = None  # first refusal of the current run of refusals
        self._released_since_trim = 0
        self._cond = threading.Condition()
        self._trim = _malloc_trim()

    def reserve(self, nbytes: int, timeout: float, what: str) -> None:
        if nbytes > self.total:
            raise TooLarge(
                f"{what} needs about {nbytes >> 20} MiB, more than the server's whole memory "
                f"budget of {self.total >> 20} MiB"
            )
        with self._cond:
            fits = self._cond.wait_for(lambda: self.in_use + nbytes <= self.total, timeout=max(0.0, timeout))
            if not fits:
                if self.refused_since is None:
                    self.refused_since = time.monotonic()
                raise AtCapacity(
                    f"server memory budget busy: {what} needs about {nbytes >> 20} MiB and "
                    f"{(self.total - self.in_use) >> 20} of {self.total >> 20} MiB stayed free "
                    f"for {timeout:.2f} s; retry later"
                )
            self.in_use += nbytes
            self.refused_since = None

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.in_use -= nbytes
            self._released_since_trim += nbytes
            idle = self.in_use == 0
            self._cond.notify_all()
        if idle:  # the end of a burst: give memory back now rather than at the next periodic trim
            self.trim_if_due()

    def trim_if_due(self, threshold: int = TRIM_AFTER_BYTES) -> bool:
        """Hand free heap memory back to the system once ``threshold`` bytes
        were released since the last trim.

        glibc keeps what decodes freed in its per-thread arenas, so without
        this RSS stays at the peak of a burst and creeps up under mixed load.
        Called when the last reservation is released, and every second by
        the server (:meth:`periodic_trim`); not per request: a trim walks
        every arena."""
        with self._cond:
            due = self._released_since_trim >= max(threshold, 1)
            if due:
                self._released_since_trim = 0
        if due:
            self._trim()
        return due

    def periodic_trim(self) -> bool:
        """The server's once-a-second trim: after 64 MiB released under load,
        or after any release once nothing is reserved (what the requests that
        just ended still freed after their reservations went)."""
        return self.trim_if_due(1 if self.in_use == 0 else TRIM_AFTER_BYTES)

    def exhausted_for(self) -> float | None:
        """Seconds requests have been refused for lack of memory without one
        getting through (None when the last reservation succeeded)."""
        since = self.refused_since
        return None if since is None else time.monotonic() - since


class RequestBudget:
    """One request's deadline, cancellation and memory reservations.

    Checked from the thread that runs the request, set from the protocol's
    event loop: hence a threading.Event and a monotonic deadline rather than
    the protocol's call object.
    """

    def __init__(self, memory: MemoryBudget | None, time_remaining: float | None) -> None:
        self._memory = memory
        self._deadline = None if time_remaining is None else time.monotonic() + time_remaining
        self._cancelled = threading.Event()
        self.held = 0
        self.streamed = False  # its image arrived as a stream (whose end may be a cancellation)

    def cancel(self) -> None:
        self._cancelled.set()

    def remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def is_active(self) -> bool:
        return not self._cancelled.is_set() and not self.expired()

    def check_time(self, pixels: int, what: str) -> None:
        """Refuse a decode of ``pixels`` that cannot finish before the deadline
        even at the fastest rate seen."""
        remaining = self.remaining()
        if remaining is not None and pixels * FASTEST_SECONDS_PER_PIXEL > remaining:
            raise DeadlineExceeded(
                f"{what} of {pixels} pixels cannot be decoded in the {max(remaining, 0) * 1000:.0f} ms "
                "left before the caller's deadline"
            )

    def reserve(self, nbytes: int, what: str, wait: float) -> None:
        """Reserve ``nbytes`` of the server's memory budget, waiting at most
        ``wait`` seconds (less if the deadline is sooner)."""
        if self._memory is None:
            return
        remaining = self.remaining()
        self._memory.reserve(nbytes, wait if remaining is None else min(wait, remaining), what)
        self.held += nbytes

    def release(self) -> None:
        if self._memory is not None and self.held:
            self._memory.release(self.held)
        self.held = 0


_current: contextvars.ContextVar[tuple[RequestBudget, float] | None] = contextvars.ContextVar(
    "request_budget", default=None
)


@contextlib.contextmanager
def bound(budget: RequestBudget, wait: float) -> Iterator[None]:
    """Make ``budget`` the one :func:`before_decode` charges in this thread,
    for a request that may wait ``wait`` seconds for memory; release its
    reservations at the end."""
    token = _current.set((budget, wait))
    try:
        yield
    finally:
        _current.reset(token)
        budget.release()


def before_decode(pixels: int, bytes_per_pixel: int, what: str) -> None:
    """Declare a decode of ``pixels`` pixels costing ``bytes_per_pixel`` bytes
    each at its peak: refused (DeadlineExceeded) if it cannot finish in time,
    else its memory is reserved (AtCapacity, TooLarge)."""
    current = _current.get()
    if current is not None:
        budget, wait = current
        budget.check_time(pixels, what)
        budget.reserve(pixels * bytes_per_pixel, what, wait)


def before_copy(nbytes: int, what: str) -> None:
    """Declare a copy of ``nbytes`` (pixels already in memory, no decoding)."""
    current = _current.get()
    if current is not None:
        budget, wait = current
        budget.reserve(nbytes, what, wait)
