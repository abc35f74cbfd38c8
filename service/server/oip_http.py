"""The Open Inference Protocol (KServe v2) over HTTP/REST, on aiohttp, on the
server's own asyncio loop.

Requests are translated to the protocol's gRPC messages and through the same
conversions (``oip_convert``) and data plane as the gRPC servicer, so both
transports accept and answer exactly the same things. JSON bodies and the
binary-data extension (``Inference-Header-Content-Length``) are supported;
errors are ``{"error": message}`` with the status from :data:`HTTP_STATUS`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web
from grpc_health.v1 import health, health_pb2

from ats_api.oip.v2 import open_inference_pb2 as pb
from service.config import AuthGroup, Config
from service.dataplane import OIP_HTTP, DataPlane, Endpoint, PredictCall
from service.errors import Code, InvalidInput, ServiceError, clip
from service.pipeline.payload import Payload
from service.server import oip_convert
from service.server.auth import REFUSAL, TokenFile, refusal_reason
from service.server.oip import SERVER_NAME, server_version
from service.server.tls import TlsFiles, WatchedTls, ssl_context
from service.uploads import Upload

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
# The one table of HTTP statuses for service errors.
HTTP_STATUS: dict[Code, int] = {
    Code.CANCELLED: 499,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.UNAUTHENTICATED: 401,
}
MODEL_READY = Endpoint(OIP_HTTP, "ModelReady")
MODEL_METADATA = Endpoint(OIP_HTTP, "ModelMetadata")
MODEL_INFER = Endpoint(OIP_HTTP, "ModelInfer")
_NUMPY = {"UINT8": np.uint8, "FP32": np.float32, "INT32": np.int32}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _NoDeadline:
    """An HTTP call has no deadline of its own (the server's limits still apply)."""

    def time_remaining(self) -> float | None:
        return None


def _error(error: ServiceError) -> web.Response:
    return web.json_response({"error": error.message}, status=HTTP_STATUS.get(error.code, 500))


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInput(f"the request body is not JSON: {err}", field="body") from None
    if not isinstance(value, dict):
        raise InvalidInput("the request body must be a JSON object", field="body")
    return value


def _parameters(target: Any, values: Any) -> None:
    """JSON parameters into a map of InferParameter (binary_data_size is the extension's own)."""
    for name, value in (values or {}).items():
        if isinstance(value, bool):
            target[name].bool_param = value
        elif isinstance(value, int):
            target[name].int64_param = value
        elif isinstance(value, float):
            target[name].double_param = value
        elif isinstance(value, str):
            target[name].string_param = value


def infer_request(
    body: bytes, header_length: str | None, name: str, version: str
) -> tuple[pb.ModelInferRequest, frozenset[str]]:
    """The gRPC message of an HTTP infer body, and the outputs to send as
    binary data; JSON of the wrong shape is the client's error, never INTERNAL."""
    try:
        return _infer_request(body, header_length, name, version)
    except (AttributeError, TypeError, ValueError, OverflowError) as err:
        raise InvalidInput(
            f"the infer request does not follow the protocol: {clip(str(err))}", field="body"
        ) from None


def _infer_request(
    body: bytes, header_length: str | None, name: str, version: str
) -> tuple[pb.ModelInferRequest, frozenset[str]]:
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH} {header_length[:20]!r} does not fit the body", field=HEADER_LENGTH
            )
        header, binary = _json(body[: int(header_length)]), body[int(header_length) :]
    else:
        header, binary = _json(body), b""
    request = pb.ModelInferRequest(model_name=name, model_version=version, id=str(header.get("id", "")))
    _parameters(request.parameters, header.get("parameters"))
    at, raw = 0, []
    for i, item in enumerate(header.get("inputs") or []):
        tensor = request.inputs.add(name=str(item.get("name", "")), datatype=str(item.get("datatype", "")))
        tensor.shape.extend(int(d) for d in item.get("shape") or [])
        parameters = dict(item.get("parameters") or {})
        size = parameters.pop("binary_data_size", None)
        _parameters(tensor.parameters, parameters)
        if size is not None:
            if not isinstance(size, int) or size < 0 or at + size > len(binary):
                raise InvalidInput(
                    f"inputs[{i}] binary_data_size does not fit the body", field=f"inputs[{i}]"
                )
            raw.append(binary[at : at + size])
            at += size
        elif tensor.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(str(v).encode() for v in np.ravel(item.get("data", [])))
        elif tensor.datatype == "UINT8":
            tensor.contents.uint_contents.extend(
                np.ravel(np.asarray(item.get("data", []), np.int64)).tolist()
            )
    if raw:
        if len(raw) != len(request.inputs):
            raise InvalidInput("give every input's data in binary, or none", field="inputs")
        request.raw_input_contents.extend(raw)
    for item in header.get("outputs") or []:
        request.outputs.add(name=str(item.get("name", "")))
    if (header.get("parameters") or {}).get("binary_data_output"):
        binary_out = frozenset(oip_convert.requested_outputs(request))
    else:
        binary_out = frozenset(
            str(o.get("name"))
            for o in header.get("outputs") or []
            if (o.get("parameters") or {}).get("binary_data")
        )
    return request, binary_out


def infer_response(message: pb.ModelInferResponse, binary: frozenset[str]) -> web.Response:
    """JSON outputs, or the binary extension's JSON header followed by the outputs' bytes."""
    outputs, chunks = [], []
    for i, output in enumerate(message.outputs):
        item: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        data = message.raw_output_contents[i]
        if output.name in binary:
            item["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif output.datatype == "BYTES":
            item["data"] = [e.decode("utf-8", "replace") for e in oip_convert.split_bytes(data, output.name)]
        else:
            item["data"] = np.frombuffer(data, _NUMPY[output.datatype]).tolist()
        outputs.append(item)
    header = {
        "model_name": message.model_name,
        "model_version": message.model_version,
        "parameters": {"seed": message.parameters["seed"].int64_param},
        "outputs": outputs,
    }
    if message.id:
        header["id"] = message.id
    text = json.dumps(header).encode()
    if not binary:
        return web.Response(body=text, content_type="application/json")
    return web.Response(
        body=text + b"".join(chunks),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )


class OpenInferenceHttp:
    """Routes of the REST protocol; ``tokens`` (when set) guards the ``restricted`` groups as on gRPC."""

    def __init__(
        self,
        plane: DataPlane,
        health_servicer: health.aio.HealthServicer,
        tokens: TokenFile | None,
        restricted: frozenset[AuthGroup],
        max_body_bytes: int,
    ) -> None:
        self._plane = plane
        self._health = health_servicer
        self._tokens = tokens
        self._restricted = restricted
        self._version = server_version()
        self.app = web.Application(client_max_size=max_body_bytes)
        model = "/v2/models/{model}"
        for path, group, handler in [
            ("/v2/health/live", AuthGroup.HEALTH, self.live),
            ("/v2/health/ready", AuthGroup.HEALTH, self.ready),
            ("/v2", AuthGroup.METADATA, self.server_metadata),
            (model, AuthGroup.METADATA, self.model_metadata),
            (model + "/versions/{version}", AuthGroup.METADATA, self.model_metadata),
            (model + "/ready", AuthGroup.HEALTH, self.model_ready),
            (model + "/versions/{version}/ready", AuthGroup.HEALTH, self.model_ready),
        ]:
            self.app.router.add_get(path, self._guarded(group, handler))
        for path in (model + "/infer", model + "/versions/{version}/infer"):
            self.app.router.add_post(path, self._guarded(AuthGroup.INFERENCE, self.infer))

    def _guarded(self, group: AuthGroup, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._tokens is not None and group in self._restricted:
                headers = [("authorization", v) for v in request.headers.getall("Authorization", [])]
                reason = refusal_reason(self._tokens, headers)
                if reason is not None:
                    log.warning(
                        "refused %s %s from %s: %s", request.method, request.path, request.remote, reason
                    )
                    return web.json_response({"error": REFUSAL}, status=401)
            try:
                return await handler(request)
            except ServiceError as error:
                return _error(error)

        return guarded

    @staticmethod
    def _boolean(value: bool) -> web.Response:
        return web.Response(status=200 if value else 400)

    async def live(self, request: web.Request) -> web.StreamResponse:
        return self._boolean(True)

    async def ready(self, request: web.Request) -> web.StreamResponse:
        check = await self._health.Check(health_pb2.HealthCheckRequest(service=""), None)
        return self._boolean(check.status == health_pb2.HealthCheckResponse.SERVING)

    async def server_metadata(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"name": SERVER_NAME, "version": self._version, "extensions": ["binary_tensor_data"]}
        )

    async def model_ready(self, request: web.Request) -> web.StreamResponse:
        """200 when ready, 400 when not (as the protocol says); 404 for a model,
        or a version, the repository does not hold."""
        number = oip_convert.version_number(request.match_info.get("version", ""))
        return self._boolean(self._plane.model_ready(MODEL_READY, request.match_info["model"], number))

    async def model_metadata(self, request: web.Request) -> web.StreamResponse:
        number = oip_convert.version_number(request.match_info.get("version", ""))
        name, versions = self._plane.model_versions(MODEL_METADATA, request.match_info["model"], number)
        message = oip_convert.metadata(name, versions)
        return web.json_response(
            {
                "name": message.name,
                "versions": list(message.versions),
                "platform": message.platform,
                "inputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in message.inputs
                ],
                "outputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in message.outputs
                ],
            }
        )

    async def infer(self, request: web.Request) -> web.StreamResponse:
        parsed: list[tuple[pb.ModelInferRequest, frozenset[str]]] = []

        async def payload(upload: Upload) -> Payload:
            image = oip_convert.image(parsed[0][0])
            upload.hold(image.nbytes())
            return image.payload()

        async def read() -> PredictCall:
            body = await request.read()
            parsed.append(
                infer_request(
                    body,
                    request.headers.get(HEADER_LENGTH),
                    request.match_info["model"],
                    request.match_info.get("version", ""),
                )
            )
            message = parsed[0][0]
            oip_convert.requested_outputs(message)
            return oip_convert.predict_call(message, payload)

        served = await self._plane.predict(MODEL_INFER, read, _NoDeadline())
        message, binary = parsed[0]
        names = oip_convert.requested_outputs(message)
        # built raw, then laid out as JSON or binary data
        return infer_response(oip_convert.response(served, message, names, raw=True), binary)


async def serve(
    config: Config, plane: DataPlane, health_servicer: health.aio.HealthServicer, tokens: TokenFile | None
) -> tuple[web.AppRunner, int]:
    """Serve the REST protocol on ``--host``:``--http-port`` with the gRPC port's
    tokens and TLS (its certificate as read at start); returns the runner to
    clean up at shutdown, and the port bound."""
    front = OpenInferenceHttp(
        plane, health_servicer, tokens, config.restricted_groups(), config.max_message_bytes
    )
    ssl = None
    if config.tls_cert:
        files = TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca, "--tls")
        ssl = WatchedTls(files, ssl_context).current
    runner = web.AppRunner(front.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host.strip("[]"), config.http_port, ssl_context=ssl, reuse_port=False)
    await site.start()
    port = int(runner.addresses[0][1])  # the port bound (0 asks for any free one)
    log.info("OIP HTTP/REST on %s:%d (%s)", config.host, port, "HTTPS" if ssl else "HTTP")
    return runner, port
