"""The Open Inference Protocol (KServe v2) over HTTP/REST, on aiohttp, on the
server's own asyncio loop.

Requests are translated to the protocol's gRPC messages and through the same
conversions (``oip_convert``) and data plane as the gRPC servicer, so both
transports accept and answer exactly the same things. JSON bodies and the
binary-data extension (``Inference-Header-Content-Length``) are supported;
errors are ``{"error": message}`` with the status from :func:`http_status`.

An infer body is received like a gRPC stream (``service.uploads``): one of
``--max-uploads``, charged to ``--upload-budget-bytes``, bounded by
``--upload-idle-timeout`` between chunks and ``--upload-total-timeout`` in
all, and by the largest message (``--max-message-bytes``). A body over that
size is 413, a full budget 429, a stalled body 504; the request's
``timeout`` parameter (microseconds, as tritonclient sends it) is its
deadline. Refusals are audited (``service.audit``) as on gRPC, and the TLS
certificate is re-read for new connections when its files change.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web
from grpc_health.v1 import health, health_pb2

from ats_api.oip.v2 import open_inference_pb2 as pb
from service import tracing
from service.config import AuthGroup, Config
from service.dataplane import OIP_HTTP, DataPlane, Endpoint, PredictCall
from service.errors import Code, InvalidInput, ServiceError, TooLarge, clip
from service.pipeline.payload import Payload
from service.server import audit, oip_convert, vocabulary
from service.server.auth import REFUSAL, TokenFile, refusal_reason
from service.server.oip import SERVER_NAME, server_version
from service.server.tls import TlsFiles, WatchedTls, rotating_ssl_context, ssl_context
from service.uploads import Upload

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
# Bytes of an infer body read at a time.
BODY_CHUNK = 1 << 16
# The one table of HTTP statuses for service errors (see http_status).
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


def http_status(error: ServiceError) -> int:
    """The HTTP status of a service error: its code's, except that a request
    or image over a size limit is 413 Content Too Large (gRPC says
    RESOURCE_EXHAUSTED for both that and a full server, which is 429 here:
    retry later)."""
    if isinstance(error, TooLarge):
        return 413
    return HTTP_STATUS.get(error.code, 500)


def _error(error: ServiceError) -> web.Response:
    error = vocabulary.OIP_HTTP.translate(error)
    return web.json_response({"error": error.message}, status=http_status(error))


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
        self._max_body_bytes = max_body_bytes
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
        """``handler`` behind the token check (a refusal is audited and its
        body never read), its service errors as the protocol's JSON errors."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._tokens is not None and group in self._restricted:
                headers = [("authorization", v) for v in request.headers.getall("Authorization", [])]
                reason = refusal_reason(self._tokens, headers)
                if reason is not None:
                    transport = request.transport
                    audit.refused(
                        audit.socket_peer(transport.get_extra_info("peername") if transport else None),
                        f"{request.method} {request.path}",
                        reason,
                        audit.certificate_names(transport.get_extra_info("peercert") if transport else None),
                    )
                    return _unread(request, web.json_response({"error": REFUSAL}, status=401))
            try:
                return await handler(request)
            except ServiceError as error:
                return _unread(request, _error(error))

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

    async def _body(self, request: web.Request, upload: Upload) -> bytes:
        """The request body, received within the upload limits and charged to
        the upload budget through ``upload`` (a declared Content-Length over
        the limit is refused before a byte is read)."""
        limit = self._max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(
                f"the request body of {request.content_length} bytes exceeds the server limit of {limit} "
                "bytes (--max-message-bytes)",
                field="body",
            )
        return await upload.receive(
            request.content.iter_chunked(BODY_CHUNK), max_bytes=limit, what="the request body"
        )

    async def infer(self, request: web.Request) -> web.StreamResponse:
        """The body is received first (as gRPC receives a unary message before
        its handler runs), so that its ``timeout`` parameter can set the
        deadline; a failure there is raised by ``read``, so it is counted like
        every other. The body's bytes stay charged until the answer is built."""
        started = time.monotonic()
        async with self._plane.uploads.upload() as upload:
            problem: ServiceError | None = None
            message, binary, timeout = pb.ModelInferRequest(), frozenset[str](), None
            try:
                message, binary = infer_request(
                    await self._body(request, upload),
                    request.headers.get(HEADER_LENGTH),
                    request.match_info["model"],
                    request.match_info.get("version", ""),
                )
                timeout = oip_convert.timeout(message.parameters)
            except ServiceError as error:
                problem = error

            async def payload(_: Upload) -> Payload:
                return oip_convert.image(message).payload()  # its bytes are the body's, charged already

            async def read() -> PredictCall:
                if problem is not None:
                    raise problem
                oip_convert.requested_outputs(message)
                return oip_convert.predict_call(message, payload)

            deadline = oip_convert.Deadline(started, None, timeout)
            with tracing.continued(request.headers):
                served = await self._plane.predict(MODEL_INFER, read, deadline)
            names = oip_convert.requested_outputs(message)
            # built raw, then laid out as JSON or binary data
            return infer_response(oip_convert.response(served, message, names, raw=True), binary)


def _unread(request: web.Request, response: web.Response) -> web.Response:
    """``response``, closing the connection after it when the request's body
    was not read to its end (a refused or stalled upload is not drained)."""
    if request.body_exists and not request.content.at_eof():
        response.force_close()
    return response


def exposure_warnings(config: Config) -> list[str]:
    """What the HTTP/REST port, bound to a host other than loopback, leaves
    open to the network (it shares the gRPC port's TLS and tokens), for the
    INSECURE warnings at start."""
    if not config.http_port:
        return []
    where = f"HTTP/REST (Open Inference Protocol) listens on {config.host}:{config.http_port}"
    warnings = []
    if not config.tls_cert:
        warnings.append(
            f"{where} without TLS: images, predictions and tokens cross the network in clear "
            "(set --tls-cert and --tls-key, or --http-port 0)"
        )
    if AuthGroup.INFERENCE not in config.restricted_groups() and not config.tls_client_ca:
        warnings.append(
            f"{where} without tokens for inference (--auth-tokens-file) or client certificates "
            "(--tls-client-ca): whoever reaches it can run the models (or set --http-port 0)"
        )
    return warnings


async def serve(
    config: Config, plane: DataPlane, health_servicer: health.aio.HealthServicer, tokens: TokenFile | None
) -> tuple[web.AppRunner, int]:
    """Serve the REST protocol on ``--host``:``--http-port`` with the gRPC port's
    tokens and TLS (its files re-read for new connections when they change);
    returns the runner to clean up at shutdown, and the port bound."""
    front = OpenInferenceHttp(
        plane, health_servicer, tokens, config.restricted_groups(), config.max_message_bytes
    )
    ssl = None
    if config.tls_cert:
        files = TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca, "--tls")
        ssl = rotating_ssl_context(WatchedTls(files, ssl_context))
    runner = web.AppRunner(front.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host.strip("[]"), config.http_port, ssl_context=ssl, reuse_port=False)
    await site.start()
    port = int(runner.addresses[0][1])  # the port bound (0 asks for any free one)
    log.info("OIP HTTP/REST on %s:%d (%s)", config.host, port, "HTTPS" if ssl else "HTTP")
    return runner, port
