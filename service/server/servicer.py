"""The ats.v1.AttentionSampling servicer: protocol only. Each RPC converts its
messages, calls the data plane, and converts the answer or the error back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import grpc

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from service.dataplane import DataPlane, PredictCall
from service.errors import Cancelled, InvalidInput, ServiceError, TooLarge
from service.server import convert, status

# A cut-off upload ends the request iterator a moment before the call shows
# the cancellation: this long to tell a cancelled stream from a truncated image.
_STREAM_SETTLE = 0.1  # seconds


@contextlib.contextmanager
def _aborting(context: grpc.ServicerContext) -> Iterator[None]:
    """End the RPC with the status of any service error raised inside."""
    try:
        yield
    except ServiceError as err:
        status.abort(context, err)


class AttentionSamplingServicer(pb_grpc.AttentionSamplingServicer):
    def __init__(self, plane: DataPlane, max_message_bytes: int) -> None:
        self._plane = plane
        self._max_message_bytes = max_message_bytes

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        def read() -> PredictCall:
            return convert.predict_call(request, lambda: convert.payload(request))

        with _aborting(context):
            served = self._plane.predict("Predict", read, context)
            return convert.response(served, request.output)

    def PredictStream(
        self, requests: Iterator[pb.PredictStreamRequest], context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        header = pb.PredictRequest()

        def read() -> PredictCall:
            try:
                first = next(requests)
            except (StopIteration, grpc.RpcError):
                first = None
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidInput("the first message of a stream must be its header", field="header")
            header.CopyFrom(first.header)
            max_bytes = self._plane.sources.limits.max_image_bytes
            return convert.predict_call(
                header, lambda: convert.stream_payload(header, _receive(requests, max_bytes))
            )

        with _aborting(context):
            served = self._plane.predict("PredictStream", read, context, settle=_STREAM_SETTLE)
            return convert.response(served, header.output)

    def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadata:
        with _aborting(context):
            name, versions = self._plane.model_versions("GetModelMetadata", request.model_name)
            return convert.metadata(name, versions, self._input_support())

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        with _aborting(context):
            models, default = self._plane.all_models("ListModels")
            support = self._input_support()
            return pb.ListModelsResponse(
                models=[convert.metadata(n, v, support) for n, v in models.items()], default_model=default
            )

    def _input_support(self) -> pb.InputSupport:
        return convert.input_support(self._plane.input_support(), self._max_message_bytes)


def _receive(requests: Iterable[pb.PredictStreamRequest], max_bytes: int) -> bytes:
    """The stream's chunks, bounded by --max-image-bytes."""
    chunks, total = [], 0
    try:
        for message in requests:
            if message.WhichOneof("part") != "chunk":
                raise InvalidInput("only the first message of a stream may be a header", field="header")
            total += len(message.chunk)
            if total > max_bytes:
                raise TooLarge(f"streamed image exceeds the server limit of {max_bytes} bytes", field="chunk")
            chunks.append(message.chunk)
    except grpc.RpcError:
        raise Cancelled("caller went away during the upload") from None
    return b"".join(chunks)
