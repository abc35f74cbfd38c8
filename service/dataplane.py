"""The data plane: everything a request needs that is not its protocol.

Each protocol front end (today the ``ats.v1`` gRPC servicer) converts its
messages into the plain records below, calls one method here, and converts
the result or the :class:`~service.errors.ServiceError` back. Here, and only
here, a request resolves its model, is admitted, runs the pipeline, and is
counted in the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from service.admission import Admission
from service.errors import Cancelled, Code, DeadlineExceeded, ServiceError
from service.metrics import Metrics
from service.models.repository import ModelRegistry, VersionEntry
from service.models.servable import ServableModel
from service.pipeline import decode, runner
from service.pipeline.payload import Payload
from service.pipeline.runner import Prediction, PredictOptions
from service.pipeline.sources import SourceRegistry

log = logging.getLogger(__name__)

# The client's own deadline timer cancels a moment before the server's fires.
_DEADLINE_SLACK = 0.25  # seconds


class Call(Protocol):
    """What the data plane needs of a protocol's call: is the caller still there?"""

    def is_active(self) -> bool: ...

    def time_remaining(self) -> float | None: ...


@dataclasses.dataclass(frozen=True)
class PredictCall:
    """One prediction as the front end read it; ``payload`` is read only once
    the request is admitted (a streamed upload arrives then)."""

    model_name: str
    model_version: int
    options: PredictOptions
    payload: Callable[[], Payload]


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


def caller_gone(call: Call, settle: float = 0.0) -> ServiceError | None:
    """Cancelled or DeadlineExceeded if the caller is gone, else None.

    A cancelled upload ends the request iterator a moment before the call
    shows the cancellation; ``settle`` gives it that long to catch up, so a
    cut-off stream counts as cancelled rather than as a truncated image.
    """
    give_up = time.monotonic() + settle
    while True:
        if not call.is_active():
            remaining = call.time_remaining()
            if remaining is not None and remaining < _DEADLINE_SLACK:
                return DeadlineExceeded("the caller's deadline passed")
            return Cancelled("the caller cancelled the call")
        if time.monotonic() >= give_up:
            return None
        time.sleep(0.005)


class DataPlane:
    def __init__(
        self, models: ModelRegistry, sources: SourceRegistry, metrics: Metrics, admission: Admission
    ) -> None:
        self.models = models
        self.sources = sources
        self.metrics = metrics
        self._admission = admission

    @contextlib.contextmanager
    def _accounted(self, endpoint: str, call: Call | None = None, settle: float = 0.0) -> Iterator[_Labels]:
        """Count the request once, under the model and version the body resolved,
        with its final code; an error while the caller is already gone becomes
        that caller's Cancelled or DeadlineExceeded.

        Labels name only models of the repository: a request for a name it
        does not hold counts under model "" (client text never becomes a
        series, so probing names cannot grow the metrics without bound)."""
        labels = _Labels()
        code = Code.OK
        try:
            yield labels
        except ServiceError as err:
            gone = caller_gone(call, settle) if call is not None else None
            if gone is not None:
                log.info("%s stopped, caller gone (%s): %s", endpoint, gone.code.value, err.message)
                code = gone.code
                raise gone from err
            code = err.code
            raise
        except Exception as err:
            code = Code.INTERNAL
            log.exception("%s failed", endpoint)
            raise InternalError(f"internal error in {endpoint}; see the server log") from err
        finally:
            self.metrics.requests.labels(labels.model, labels.version, endpoint, code.value).inc()

    def predict(
        self, endpoint: str, read: Callable[[], PredictCall], call: Call, settle: float = 0.0
    ) -> Served:
        """Run one prediction: ``read`` converts the protocol's request (its
        errors are counted like any other), ``endpoint`` names it in metrics."""
        self.metrics.in_flight.inc()
        try:
            with self._accounted(endpoint, call, settle) as labels:
                request = read()
                model = self.models.resolve(request.model_name, request.model_version)
                labels.model, labels.version = model.name, str(model.version)
                with self._admission.slot(call.time_remaining()):
                    prediction = runner.run(
                        model, request.payload(), request.options, self.sources, call.is_active
                    )
                self.metrics.observe_prediction(model.name, prediction)
                return Served(model, prediction)
        finally:
            self.metrics.in_flight.dec()

    def model_versions(self, endpoint: str, name: str) -> tuple[str, list[VersionEntry]]:
        """A model's name (the default for an empty one) and all its versions."""
        with self._accounted(endpoint) as labels:
            name = self.models.model_name(name)
            versions = self.models.versions(name)
            labels.model = name
            return name, versions

    def all_models(self, endpoint: str) -> tuple[dict[str, list[VersionEntry]], str]:
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
