"""The ats.v1.AttentionSampling servicer: protocol only. Each RPC converts its
messages, calls the data plane, and converts the answer or the error back."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from service.dataplane import ATS_V1, DataPlane, Endpoint, PredictCall
from service.errors import InvalidInput, ServiceError
from service.pipeline.payload import Payload
from service.server import convert, status
from service.server.registration import parsed
from service.uploads import Declared, Upload

PREDICT = Endpoint(ATS_V1, "Predict")
PREDICT_STREAM = Endpoint(ATS_V1, "PredictStream")
GET_MODEL_METADATA = Endpoint(ATS_V1, "GetModelMetadata")
LIST_MODELS = Endpoint(ATS_V1, "ListModels")


class AttentionSamplingServicer(pb_grpc.AttentionSamplingServicer):
    def __init__(self, plane: DataPlane, max_message_bytes: int) -> None:
        self._plane = plane
        self._max_message_bytes = max_message_bytes

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        async def payload(upload: Upload) -> Payload:
            upload.hold(len(request.image) + len(request.tensor.data))
            return convert.payload(request)

        async def read() -> PredictCall:
            return convert.predict_call(parsed(request), payload)

        try:
            served = await self._plane.predict(PREDICT, read, context)
        except ServiceError as err:
            await status.abort(context, err)
        return convert.response(served, request.output)

    async def PredictStream(
        self, requests: AsyncIterator[pb.PredictStreamRequest], context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        header = pb.PredictRequest()
        uploads = self._plane.uploads

        async def payload(upload: Upload) -> Payload:
            source = convert.stream_source(header)
            return source(await upload.receive(_chunks(requests), _declared(header)))

        async def read() -> PredictCall:
            first = await uploads.first(requests)
            if first is None or parsed(first).WhichOneof("part") != "header":
                raise InvalidInput("the first message of a stream must be its header", field="header")
            header.CopyFrom(first.header)
            return convert.predict_call(header, payload)

        try:
            served = await self._plane.predict(PREDICT_STREAM, read, context)
        except ServiceError as err:
            await status.abort(context, err)
        return convert.response(served, header.output)

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadata:
        try:
            name, versions = self._plane.model_versions(GET_MODEL_METADATA, parsed(request).model_name)
        except ServiceError as err:
            await status.abort(context, err)
        return convert.metadata(name, versions, self._input_support())

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        try:
            parsed(request)
            models, default = self._plane.all_models(LIST_MODELS)
        except ServiceError as err:
            await status.abort(context, err)
        support = self._input_support()
        return pb.ListModelsResponse(
            models=[convert.metadata(n, v, support) for n, v in models.items()], default_model=default
        )

    def _input_support(self) -> pb.InputSupport:
        return convert.input_support(self._plane.input_support(), self._max_message_bytes)


async def _chunks(requests: AsyncIterator[pb.PredictStreamRequest]) -> AsyncIterator[bytes]:
    """The stream's chunks after its header."""
    async for message in requests:
        if parsed(message).WhichOneof("part") != "chunk":
            raise InvalidInput("only the first message of a stream may be a header", field="header")
        yield message.chunk


def _declared(header: pb.PredictRequest) -> Declared | None:
    """A streamed tensor's size as its header declares it, checked before any chunk."""
    if header.WhichOneof("source") != "tensor" or not header.tensor.shape:
        return None
    shape = list(header.tensor.shape)
    if min(shape) <= 0:
        raise InvalidInput(f"tensor shape {shape[:8]} has a size below 1", field="header.tensor.shape")
    return Declared(pixels=math.prod(shape[:2]), nbytes=math.prod(shape))
