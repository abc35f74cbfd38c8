"""The ats.v1.AttentionSampling servicer: protocol only. It resolves the model,
holds a prediction slot, hands the payload to the pipeline, and maps results
and errors to messages, statuses and metrics."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import grpc

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from service.pipeline import runner
from service.pipeline.errors import Cancelled, InvalidInput, NotFound, PipelineError, TooLarge
from service.pipeline.payload import Payload
from service.pipeline.sources import SourceLimits
from service.server import convert, status
from service.server.metrics import Metrics
from service.server.repository import ModelRegistry

log = logging.getLogger(__name__)


class AtCapacity(PipelineError):
    code = "RESOURCE_EXHAUSTED"


_DEADLINE_SLACK = 0.25  # seconds


def _caller_gone(context: grpc.ServicerContext, settle: bool) -> str | None:
    """The status of a call whose caller is gone (DEADLINE_EXCEEDED or CANCELLED), else None.

    A cancelled upload ends the request iterator a moment before the context
    shows the cancellation; with ``settle`` the context gets 100 ms to catch
    up, so a cut-off stream counts as cancelled rather than as a truncated image.
    """
    give_up = time.monotonic() + (0.1 if settle else 0.0)
    while True:
        if not context.is_active():
            # the client's own deadline timer cancels a moment before the server's fires
            return "DEADLINE_EXCEEDED" if context.time_remaining() < _DEADLINE_SLACK else "CANCELLED"
        if time.monotonic() >= give_up:
            return None
        time.sleep(0.005)


class AttentionSamplingServicer(pb_grpc.AttentionSamplingServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        limits: SourceLimits,
        max_concurrent: int,
        queue_timeout: float,
        max_message_bytes: int,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._limits = limits
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._queue_timeout = queue_timeout
        self._max_message_bytes = max_message_bytes

    # -- RPCs --------------------------------------------------------------
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        return self._predict("Predict", request, lambda: convert.payload(request), context)

    def PredictStream(
        self, requests: Iterator[pb.PredictStreamRequest], context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        try:
            first = next(requests)
        except (StopIteration, grpc.RpcError):
            first = None
        if first is None or first.WhichOneof("part") != "header":
            self._metrics.requests.labels("", "", "PredictStream", "INVALID_ARGUMENT").inc()
            status.abort(
                context, InvalidInput("the first message of a stream must be its header", field="header")
            )
        header = first.header
        return self._predict(
            "PredictStream", header, lambda: convert.stream_payload(header, self._receive(requests)), context
        )

    def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadata:
        name = request.model_name or self._registry.default_model()
        versions = self._registry.snapshot().get(name)
        if versions is None:
            error = (
                NotFound(f"model {name!r} is not in the repository", field="model_name")
                if name
                else InvalidInput(
                    "model_name is required: the server has several models and no default", field="model_name"
                )
            )
            self._metrics.requests.labels(name, "", "GetModelMetadata", error.code).inc()
            status.abort(context, error)
        self._metrics.requests.labels(name, "", "GetModelMetadata", "OK").inc()
        return convert.metadata(name, versions, self._input_support())

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        self._metrics.requests.labels("", "", "ListModels", "OK").inc()
        support = self._input_support()
        return pb.ListModelsResponse(
            models=[convert.metadata(n, v, support) for n, v in self._registry.snapshot().items()],
            default_model=self._registry.default_model(),
        )

    def _input_support(self) -> pb.InputSupport:
        """Built per call: source kinds can be registered after start."""
        return convert.input_support(self._limits, self._max_message_bytes)

    # -- shared path -------------------------------------------------------
    def _predict(
        self,
        rpc: str,
        request: pb.PredictRequest,
        read_payload: Callable[[], Payload],
        context: grpc.ServicerContext,
    ) -> pb.PredictResponse:
        labels = [request.model_name, str(request.model_version or ""), rpc]
        code = "OK"
        self._metrics.in_flight.inc()
        try:
            model = self._registry.resolve(request.model_name, request.model_version)
            labels[:2] = [model.name, str(model.version)]
            options = convert.options(request)
            with self._slot(context):
                prediction = runner.run(model, read_payload(), options, self._limits, context.is_active)
            self._metrics.observe_prediction(
                model.name,
                prediction.timings,
                prediction.image_shape[0] * prediction.image_shape[1] / 1e6,
                len(prediction.offsets),
            )
            return convert.response(model.name, model.version, model.spec, prediction, request.output)
        except PipelineError as err:
            code = _caller_gone(context, settle=rpc == "PredictStream") or err.code
            if code != err.code:
                log.info("%s stopped, caller gone (%s): %s", rpc, code, err.message)
                err.code = code
            status.abort(context, err)
        except Exception:
            code = "INTERNAL"
            log.exception("%s failed", rpc)
            context.abort(grpc.StatusCode.INTERNAL, "internal error while predicting; see server log")
        finally:
            self._metrics.in_flight.dec()
            self._metrics.requests.labels(*labels, code).inc()

    @contextlib.contextmanager
    def _slot(self, context: grpc.ServicerContext) -> Iterator[None]:
        """One of --max-concurrent-predicts slots, waited for at most the queue
        timeout (or the caller's deadline, if sooner)."""
        remaining = context.time_remaining()
        wait = self._queue_timeout if remaining is None else max(0.0, min(self._queue_timeout, remaining))
        if not self._slots.acquire(timeout=wait):
            raise AtCapacity(
                f"server at capacity: every prediction slot stayed busy for {wait:.2f} s; retry later"
            )
        try:
            yield
        finally:
            self._slots.release()

    def _receive(self, requests: Iterable[pb.PredictStreamRequest]) -> bytes:
        """The stream's chunks, bounded by --max-image-bytes."""
        chunks, total = [], 0
        try:
            for message in requests:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidInput("only the first message of a stream may be a header", field="header")
                total += len(message.chunk)
                if total > self._limits.max_image_bytes:
                    raise TooLarge(
                        f"streamed image exceeds the server limit of {self._limits.max_image_bytes} bytes",
                        field="chunk",
                    )
                chunks.append(message.chunk)
        except grpc.RpcError:
            raise Cancelled("caller went away during the upload") from None
        return b"".join(chunks)
