"""The data plane: everything a request needs that is not its protocol.

Each protocol front end (today the ``ats.v1`` gRPC servicer) converts its
messages into the plain records below, calls one method here, and converts
the result or the :class:`~service.errors.ServiceError` back. Here, and only
here, a request resolves its model, is admitted, runs the pipeline, and is
counted in the metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from service import tracing
from service.admission import Admission
from service.batching import Batcher
from service.budget import DEADLINE_SLACK, MemoryBudget, RequestBudget, bound
from service.errors import Code, DeadlineExceeded, NotFound, ServiceError
from service.metrics import Metrics
from service.models.repository import ModelRegistry, State, VersionEntry
from service.models.servable import ServableModel
from service.pipeline import decode, runner
from service.pipeline.payload import Payload
from service.pipeline.runner import Prediction, PredictOptions
from service.pipeline.sources import SourceRegistry
from service.uploads import Upload, Uploads

log = logging.getLogger(__name__)

# How long a failed prediction waits for its caller's cancellation to show.
_SETTLE = 0.05  # seconds


# The protocols, as the ``protocol`` label of the request metrics names them.
ATS_V1 = "ats.v1"
OIP_GRPC = "oip.grpc"
OIP_HTTP = "oip.http"
TFSERVING = "tfserving"
PROTOCOLS = (ATS_V1, OIP_GRPC, OIP_HTTP, TFSERVING)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A call as the metrics (and logs) name it: its protocol (one of
    :data:`PROTOCOLS`) and the protocol's own name of the RPC or route
    (``Predict``, ``ModelInfer``, ...)."""

    protocol: str
    rpc: str

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}")

    def __str__(self) -> str:
        return f"{self.protocol} {self.rpc}"


class Call(Protocol):
    """What the data plane needs of a protocol's call: how long its caller waits.
    (A caller that goes away cancels the front end's coroutine.)"""

    def time_remaining(self) -> float | None: ...


@dataclasses.dataclass(frozen=True)
class PredictCall:
    """One prediction as the front end read it. ``payload`` brings the image
    once the model is resolved and before a prediction slot is taken: a
    streamed upload arrives then, through the request's :class:`Upload`."""

    model_name: str
    model_version: int
    options: PredictOptions
    payload: Callable[[Upload], Awaitable[Payload]]


@dataclasses.dataclass(frozen=True)
class Served:
    model: ServableModel
    prediction: Prediction


@dataclasses.dataclass(frozen=True)
class InputSupport:
    """What the server accepts, for model metadata."""

    source_kinds: list[str]
    image_formats: tuple[str, ...]
    tile_formats: tuple[str, ...]
    tensor_dtypes: tuple[str, ...]
    max_image_pixels: int
    max_image_bytes: int


class InternalError(ServiceError):
    """A bug or an unexpected failure; the details are in the server log only."""

    code = Code.INTERNAL


@dataclasses.dataclass
class _Labels:
    model: str = ""
    version: str = ""
    code: Code = Code.OK


def _cancellation_code(budget: RequestBudget) -> Code:
    """A cancelled call's outcome: its deadline, if that was (nearly) reached."""
    remaining = budget.remaining()
    return Code.DEADLINE_EXCEEDED if remaining is not None and remaining < DEADLINE_SLACK else Code.CANCELLED


class DataPlane:
    """Model resolution, uploads, admission, the pipeline and metrics, for
    every protocol. Coroutines on the server's event loop; the pipeline runs
    in ``executor`` threads."""

    def __init__(
        self,
        models: ModelRegistry,
        sources: SourceRegistry,
        metrics: Metrics,
        admission: Admission,
        uploads: Uploads,
        memory: MemoryBudget,
        executor: concurrent.futures.Executor,
        batcher: Batcher | None = None,
    ) -> None:
        self.models = models
        self.sources = sources
        self.metrics = metrics
        self.uploads = uploads
        self.memory = memory
        self._admission = admission
        self._executor = executor
        self._batcher = batcher

    @contextlib.contextmanager
    def _accounted(self, endpoint: Endpoint) -> Iterator[_Labels]:
        """Count the request once, under the model and version the body
        resolved, with its final code (set by the body or by its error).

        Labels name only models of the repository: a request for a name it
        does not hold counts under model "" (client text never becomes a
        series, so probing names cannot grow the metrics without bound)."""
        labels = _Labels()
        try:
            yield labels
        except ServiceError as err:
            labels.code = err.code
            raise
        except Exception as err:
            labels.code = Code.INTERNAL
            log.exception("%s failed", endpoint)
            raise InternalError(f"internal error in {endpoint}; see the server log") from err
        finally:
            self.metrics.requests.labels(
                model=labels.model,
                version=labels.version,
                protocol=endpoint.protocol,
                rpc=endpoint.rpc,
                code=labels.code.value,
            ).inc()

    @staticmethod
    async def _caller_gone(budget: RequestBudget, labels: _Labels) -> None:
        """Run when a prediction with a streamed upload fails: if its caller is
        gone, the failure is a symptom (a cancelled upload ends like a
        truncated one), so the call ends as CANCELLED or DEADLINE_EXCEEDED.

        gRPC ends a cancelled call's request stream a moment before it cancels
        the handler; the settle gives that cancellation time to arrive."""
        try:
            await asyncio.sleep(_SETTLE)
        except asyncio.CancelledError:
            labels.code = _cancellation_code(budget)
            raise
        if budget.expired():
            labels.code = Code.DEADLINE_EXCEEDED
            raise DeadlineExceeded("the caller's deadline passed") from None

    async def predict(
        self, endpoint: Endpoint, read: Callable[[], Awaitable[PredictCall]], call: Call
    ) -> Served:
        """Run one prediction: ``read`` converts the protocol's request (its
        errors are counted like any other), ``endpoint`` names it in metrics.
        A prediction that succeeds is timed, from the call's start (its body
        read, its upload, its wait for a slot) to its answer, in
        ``ats_request_seconds``, so that the protocols can be compared."""
        started = time.perf_counter()
        budget = RequestBudget(self.memory, call.time_remaining())
        self.metrics.in_flight.inc()
        with tracing.span("ats.predict", protocol=endpoint.protocol) as span:
            try:
                with self._accounted(endpoint) as labels:
                    try:
                        served = await self._predict(read, budget, labels)
                        self.metrics.request_seconds.labels(
                            model=served.model.name, protocol=endpoint.protocol, rpc=endpoint.rpc
                        ).observe(time.perf_counter() - started)
                        return served
                    except ServiceError:
                        if budget.streamed:
                            await self._caller_gone(budget, labels)
                        raise
                    except asyncio.CancelledError:
                        labels.code = _cancellation_code(budget)
                        raise
            finally:
                self.metrics.in_flight.dec()
                if labels.model:  # resolved: a name of the repository, never the client's text
                    span.set_attributes({"ats.model": labels.model, "ats.version": labels.version})
                span.set_attribute("ats.code", labels.code.value)

    async def _predict(
        self, read: Callable[[], Awaitable[PredictCall]], budget: RequestBudget, labels: _Labels
    ) -> Served:
        request = await read()
        model = self.models.resolve(request.model_name, request.model_version)
        labels.model, labels.version = model.name, str(model.version)
        async with self.uploads.upload() as upload:
            try:
                payload = await request.payload(upload)
            finally:
                budget.streamed = upload.streamed
            async with self._admission.slot(budget.remaining()):
                prediction = await self._run(model, payload, request.options, budget)
        self.metrics.observe_prediction(model.name, prediction)
        return Served(model, prediction)

    async def _run(
        self, model: ServableModel, payload: Payload, options: PredictOptions, budget: RequestBudget
    ) -> Prediction:
        """The pipeline in a worker thread. If the caller goes away, the thread
        stops at its next stage and keeps the slot until then, so admission
        never counts fewer predictions than are running."""
        if not budget.is_active():  # the deadline passed while it waited: do not start
            raise DeadlineExceeded("the caller's deadline passed before the prediction started")

        def work() -> Prediction:
            with bound(budget, self._admission.queue_timeout):
                try:
                    return runner.run(model, payload, options, self.sources, budget.is_active, self._batcher)
                except ServiceError as err:
                    # The traceback's frames, and those of the library error
                    # it replaced (its context), hold what the stages had made
                    # (a half-decoded image) in reference cycles that only a
                    # later garbage collection would free: drop them now.
                    err.__context__ = err.__cause__ = None
                    raise err.with_traceback(None) from None

        future = asyncio.get_running_loop().run_in_executor(self._executor, tracing.bind(work))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            budget.cancel()
            await asyncio.wait([future])
            raise

    def model_versions(
        self, endpoint: Endpoint, name: str, version: int = 0
    ) -> tuple[str, list[VersionEntry]]:
        """A model's name (the default for an empty one) and all its versions;
        NOT_FOUND when the model, or ``version`` (unless 0), is not in the repository."""
        with self._accounted(endpoint) as labels:
            name = self.models.model_name(name)
            versions = self.models.versions(name)
            labels.model = name
            if version:
                _entry(versions, name, version)
                labels.version = str(version)
            return name, versions

    def model_ready(self, endpoint: Endpoint, name: str, version: int = 0) -> bool:
        """Whether ``version`` of a model (0: any version) is READY; NOT_FOUND
        when the model or that version is not in the repository (a version
        still loading, or one that failed, is there but not ready)."""
        with self._accounted(endpoint) as labels:
            name = self.models.model_name(name)
            versions = self.models.versions(name)
            labels.model = name
            if not version:
                return any(e.state is State.READY for e in versions)
            entry = _entry(versions, name, version)
            labels.version = str(version)
            return entry.state is State.READY

    def all_models(self, endpoint: Endpoint) -> tuple[dict[str, list[VersionEntry]], str]:
        """Every model's versions, and the default model ("" when none)."""
        with self._accounted(endpoint):
            return self.models.snapshot(), self.models.default_model()

    def input_support(self) -> InputSupport:
        """Built per call: what the sources accept is the server's live state."""
        limits = self.sources.limits
        return InputSupport(
            source_kinds=self.sources.kinds(),
            image_formats=self.sources.formats("image"),
            tile_formats=self.sources.formats("tile"),
            tensor_dtypes=decode.TENSOR_DTYPES,
            max_image_pixels=limits.max_image_pixels,
            max_image_bytes=limits.max_image_bytes,
        )


def _entry(versions: list[VersionEntry], name: str, version: int) -> VersionEntry:
    for entry in versions:
        if entry.version == version:
            return entry
    raise NotFound(f"model {name!r} has no version {version}", field="model_version")
