"""The Open Inference Protocol (KServe v2) gRPC servicer,
``inference.GRPCInferenceService``: protocol only, like the ats.v1 servicer.
Inference goes through the same data plane (admission, limits, metrics under
the RPC's name, errors through ``service.server.status``), so a stock
tritonclient or KServe client calls the same models the same way."""

from __future__ import annotations

import importlib.metadata
import time

import grpc
from grpc_health.v1 import health, health_pb2

from ats_api.oip.v2 import open_inference_pb2 as pb
from ats_api.oip.v2 import open_inference_pb2_grpc as pb_grpc
from service.dataplane import OIP_GRPC, DataPlane, Endpoint, PredictCall
from service.errors import ServiceError
from service.pipeline.payload import Payload
from service.server import oip_convert, status, vocabulary
from service.server.registration import parsed, parsed_or_abort
from service.uploads import Upload

SERVER_NAME = "ats-serve"
MODEL_READY = Endpoint(OIP_GRPC, "ModelReady")
MODEL_METADATA = Endpoint(OIP_GRPC, "ModelMetadata")
MODEL_INFER = Endpoint(OIP_GRPC, "ModelInfer")


def server_version() -> str:
    try:
        return importlib.metadata.version("attention-sampling-serving")
    except importlib.metadata.PackageNotFoundError:
        return ""


class OpenInferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``health`` answers ServerReady: the server's overall health entry, so
    draining and the process's vitals count as they do for probes."""

    def __init__(self, plane: DataPlane, health_servicer: health.aio.HealthServicer) -> None:
        self._plane = plane
        self._health = health_servicer
        self._version = server_version()

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        await parsed_or_abort(request, context)
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        await parsed_or_abort(request, context)
        # The overall entry "" always exists, so Check never aborts through our context.
        check = await self._health.Check(health_pb2.HealthCheckRequest(service=""), context)
        return pb.ServerReadyResponse(ready=check.status == health_pb2.HealthCheckResponse.SERVING)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """Ready when the version asked (any, for an empty one) is READY;
        NOT_FOUND for a model, or a version, the repository does not hold."""
        try:
            name: str = parsed(request).name
            number = oip_convert.version_number(request.version)
            ready = self._plane.model_ready(MODEL_READY, name, number)
        except ServiceError as err:
            await status.abort(context, vocabulary.OIP.translate(err))
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        await parsed_or_abort(request, context)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            message: pb.ModelMetadataRequest = parsed(request)
            number = oip_convert.version_number(message.version)
            name, versions = self._plane.model_versions(MODEL_METADATA, message.name, number)
        except ServiceError as err:
            await status.abort(context, vocabulary.OIP.translate(err))
        return oip_convert.metadata(name, versions)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """The call's deadline: gRPC's, or the ``timeout`` parameter if sooner."""
        started = time.monotonic()
        problem: ServiceError | None = None
        try:
            timeout = oip_convert.timeout(parsed(request).parameters)
        except ServiceError as err:  # raised by read(), so that it is counted
            problem, timeout = err, None

        async def payload(upload: Upload) -> Payload:
            image = oip_convert.image(request)
            upload.hold(image.nbytes())
            return image.payload()

        async def read() -> PredictCall:
            if problem is not None:
                raise problem
            message: pb.ModelInferRequest = parsed(request)
            oip_convert.requested_outputs(message)  # refused before the model runs
            return oip_convert.predict_call(message, payload)

        try:
            deadline = oip_convert.Deadline(started, context.time_remaining(), timeout)
            served = await self._plane.predict(MODEL_INFER, read, deadline)
        except ServiceError as err:
            await status.abort(context, vocabulary.OIP.translate(err))
        names = oip_convert.requested_outputs(request)
        return oip_convert.response(served, request, names, raw=bool(request.raw_input_contents))
