"""Dynamic batching across requests: predictions that arrive together run as one graph call.

A request's worker thread decodes its image, then hands it here and waits.
A batch thread takes what is queued (up to ``max_size``; if fewer, it waits
at most ``timeout`` for more, counted from the oldest request), groups the
requests that can share a call (same model, image shape, patch count and
sampling mode) and runs each group through the model's fused graph. Under
load, requests pile up while a batch runs, so batches grow exactly when
sharing pays; a lone request with ``timeout`` 0 never waits.

Cancellation stays per request: a request whose caller left is dropped from
the queue, and one whose batch already runs is answered CANCELLED once the
batch is done (its image stays charged to the memory budget until then).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable

import tensorflow as tf

from model_ops.sampling import Mode
from service import tracing
from service.errors import Cancelled
from service.models.servable import ServableModel
from service.pipeline.fused import BatchResult, fused_graph

log = logging.getLogger(__name__)

# How often a waiting worker checks that its caller is still there.
_POLL = 0.01  # seconds


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    max_size: int  # requests per graph call at most
    timeout: float  # seconds a batch may wait for more requests
    threads: int  # batches running at once


@dataclasses.dataclass(frozen=True)
class Batched:
    """One request's share of a batch."""

    result: BatchResult
    row: int
    size: int  # requests in its graph call
    queued: float  # seconds it waited for the call to start


@dataclasses.dataclass
class _Request:
    model: ServableModel
    image: tf.Tensor  # uint8 (1, H, W, C)
    low_shape: tuple[int, int]
    n_patches: int
    seed: int
    mode: Mode
    with_patches: bool
    enqueued: float = dataclasses.field(default_factory=time.perf_counter)
    future: concurrent.futures.Future[Batched] = dataclasses.field(default_factory=concurrent.futures.Future)

    def group(self) -> Hashable:
        """Requests of one group can share a graph call."""
        return (id(self.model), tuple(self.image.shape), self.low_shape, self.n_patches, self.mode)


Observer = Callable[[str, int], None]  # model name, requests in the graph call


class Batcher:
    """The queue and the batch threads; ``run`` is called from worker threads."""

    def __init__(self, settings: BatchSettings, observe: Observer = lambda model, size: None) -> None:
        self.settings = settings
        self._observe = observe
        self._queue: collections.deque[_Request] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"batch-{i}", daemon=True)
            for i in range(settings.threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(
        self,
        model: ServableModel,
        image: tf.Tensor,
        low_shape: tuple[int, int],
        n_patches: int,
        seed: int,
        mode: Mode,
        with_patches: bool,
        is_active: Callable[[], bool],
    ) -> Batched:
        """Queue one image and wait for its batch (raises Cancelled if the caller left)."""
        request = _Request(model, image, low_shape, n_patches, seed, mode, with_patches)
        with self._ready:
            if self._closed:
                raise Cancelled("the server is stopping")
            self._queue.append(request)
            self._ready.notify()
        waited_from = time.time()
        batched = self._wait(request, is_active)
        tracing.record("ats.batch.queue", waited_from, waited_from + batched.queued, batch_size=batched.size)
        if not is_active():
            raise Cancelled("caller gone during its batch")
        return batched

    def _wait(self, request: _Request, is_active: Callable[[], bool]) -> Batched:
        while True:
            try:
                return request.future.result(timeout=_POLL)
            except concurrent.futures.TimeoutError:
                if not is_active() and request.future.cancel():
                    self._discard(request)
                    raise Cancelled("caller gone while queued for a batch") from None

    def _discard(self, request: _Request) -> None:
        with self._ready, contextlib.suppress(ValueError):  # a batch thread took it and will skip it
            self._queue.remove(request)

    def _take(self) -> list[_Request] | None:
        """The next batch: whatever is queued, up to ``max_size``, waiting up
        to ``timeout`` after the oldest request for more; None once closed."""
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued + self.settings.timeout
            while len(self._queue) < self.settings.max_size and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._ready.wait(left)
            size = min(len(self._queue), self.settings.max_size)
            return [self._queue.popleft() for _ in range(size)]

    def _serve(self) -> None:
        while (batch := self._take()) is not None:
            groups: dict[Hashable, list[_Request]] = {}
            for request in batch:
                if request.future.set_running_or_notify_cancel():
                    groups.setdefault(request.group(), []).append(request)
            for requests in groups.values():
                self._run_group(requests)

    def _run_group(self, requests: list[_Request]) -> None:
        first = requests[0]
        started = time.perf_counter()
        try:
            result = fused_graph(first.model).run(
                [r.image for r in requests],
                first.low_shape,
                first.n_patches,
                [r.seed for r in requests],
                first.mode,
                with_patches=any(r.with_patches for r in requests),
            )
        except Exception as err:  # each waiting request gets the failure as its own
            for request in requests:
                request.future.set_exception(err)
            return
        self._observe(first.model.name, len(requests))
        for row, request in enumerate(requests):
            request.future.set_result(Batched(result, row, len(requests), started - request.enqueued))

    def close(self) -> None:
        """Stop the batch threads once the queue is empty; queued requests still run."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
