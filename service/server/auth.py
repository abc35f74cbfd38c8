"""Token authentication per API group, for every RPC of every service.

A call of a restricted group (``--auth-groups``) must carry the metadata
``authorization: Bearer <token>`` with a token of ``--auth-tokens-file``;
otherwise it ends UNAUTHENTICATED with one message whatever went wrong, and
one audit line for the operator (:mod:`service.server.audit`).

Every method the server serves is named in :data:`METHOD_GROUPS`. A new
front end (another protocol: KServe v2, a REST gateway's gRPC side, ...)
adds one line per method it registers there, choosing the group the
operator would expect; a method missing from the table needs a token
whenever tokens are configured, whatever ``--auth-groups`` says (the
strictest rule), and tests/security fails on any method the server serves
that the table does not name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from service.config import AuthGroup
from service.server import audit
from service.server.files import CredentialFileError, Stamp, check_private, read, stamp

log = logging.getLogger(__name__)

# Full gRPC method name -> the group whose restriction applies to it.
METHOD_GROUPS: dict[str, AuthGroup] = {
    "/ats.v1.AttentionSampling/Predict": AuthGroup.INFERENCE,
    "/ats.v1.AttentionSampling/PredictStream": AuthGroup.INFERENCE,
    "/ats.v1.AttentionSampling/GetModelMetadata": AuthGroup.METADATA,
    "/ats.v1.AttentionSampling/ListModels": AuthGroup.METADATA,
    "/inference.GRPCInferenceService/ServerLive": AuthGroup.HEALTH,
    "/inference.GRPCInferenceService/ServerReady": AuthGroup.HEALTH,
    "/inference.GRPCInferenceService/ModelReady": AuthGroup.HEALTH,
    "/inference.GRPCInferenceService/ServerMetadata": AuthGroup.METADATA,
    "/inference.GRPCInferenceService/ModelMetadata": AuthGroup.METADATA,
    "/inference.GRPCInferenceService/ModelInfer": AuthGroup.INFERENCE,
    "/tensorflow.serving.PredictionService/Predict": AuthGroup.INFERENCE,
    "/tensorflow.serving.PredictionService/Classify": AuthGroup.INFERENCE,
    "/tensorflow.serving.PredictionService/Regress": AuthGroup.INFERENCE,
    "/tensorflow.serving.PredictionService/MultiInference": AuthGroup.INFERENCE,
    "/tensorflow.serving.PredictionService/GetModelMetadata": AuthGroup.METADATA,
    "/tensorflow.serving.ModelService/GetModelStatus": AuthGroup.METADATA,
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest": AuthGroup.INFERENCE,
    "/grpc.health.v1.Health/Check": AuthGroup.HEALTH,
    "/grpc.health.v1.Health/Watch": AuthGroup.HEALTH,
    "/grpc.health.v1.Health/List": AuthGroup.HEALTH,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": AuthGroup.REFLECTION,
}

# What every refused caller reads: never which of missing, malformed or unknown.
REFUSAL = "this call needs a valid token: send the metadata 'authorization: Bearer <token>'"
_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")
_BEARER = re.compile(r"bearer +(\S+)", re.IGNORECASE)


def parse_tokens(text: str, path: str) -> tuple[list[bytes], bool]:
    """(SHA-256 digests of the accepted tokens, whether any line is a plain token).

    One token per line, or ``sha256:<64 hex digits>`` of one; blank lines and
    lines starting with ``#`` are skipped.
    """
    digests, plain = [], False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hashed = _HASHED.fullmatch(line)
        if hashed:
            digests.append(bytes.fromhex(hashed[1]))
        elif line.lower().startswith("sha256:"):
            raise CredentialFileError(f"--auth-tokens-file {path} line {number}: sha256: needs 64 hex digits")
        elif any(c.isspace() for c in line):
            raise CredentialFileError(f"--auth-tokens-file {path} line {number}: a token has no spaces")
        else:
            digests.append(hashlib.sha256(line.encode()).digest())
            plain = True
    if not digests:
        raise CredentialFileError(f"--auth-tokens-file {path} holds no token")
    return digests, plain


class TokenFile:
    """The accepted tokens, as SHA-256 digests, re-read when the file changes.

    A file holding plain tokens is a secret and must be private like a key
    (:func:`~service.server.files.exposure`); a file of hashes only may be
    readable by anyone. A change that leaves the file unusable is logged and
    the previous tokens stay in force.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = stamp([path])
        self._refused: Stamp | None = None
        self._digests = self._read()  # an unusable file stops the start
        log.info("--auth-tokens-file %s: %d token(s)", path, len(self._digests))

    def _read(self) -> list[bytes]:
        data, info = read(self.path, "--auth-tokens-file")
        digests, plain = parse_tokens(data.decode("utf-8", errors="replace"), self.path)
        if plain:
            check_private(self.path, "--auth-tokens-file", info, because="holds plain tokens and ")
        return digests

    def digests(self) -> list[bytes]:
        """The current digests, re-read first if the file changed."""
        current = stamp([self.path])
        if current in (self._stamp, self._refused):
            return self._digests
        with self._lock:
            if current not in (self._stamp, self._refused):
                try:
                    self._digests, self._stamp = self._read(), current
                    log.info("--auth-tokens-file %s reloaded: %d token(s)", self.path, len(self._digests))
                except CredentialFileError as error:
                    log.error("%s; the previous tokens stay in force", error)
                    self._refused = current
        return self._digests

    def accepts(self, token: str) -> bool:
        """Whether ``token`` is one of the accepted tokens, in time independent of which one."""
        digest = hashlib.sha256(token.encode()).digest()
        found = False
        for known in self.digests():
            found |= hmac.compare_digest(digest, known)
        return found


def refusal_reason(tokens: TokenFile, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """Why a call with ``metadata`` is refused (for the audit log, never the caller), or None."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return "no authorization metadata"
    if len(values) > 1:
        return "more than one authorization metadata"
    bearer = _BEARER.fullmatch(values[0]) if isinstance(values[0], str) else None
    if bearer is None:
        return "authorization metadata is not 'Bearer <token>'"
    if not tokens.accepts(bearer[1]):
        return "unknown token"
    return None


def _refusing(handler: grpc.RpcMethodHandler, method: str, reason: str) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that audits and refuses the call.

    Of the same kind so that the metrics interceptor around it labels the call
    as the method it is; requests are left as bytes, never parsed.
    """

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        audit.refused_call(context, method, reason)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    request, response = (
        ("stream" if streaming else "unary")
        for streaming in (handler.request_streaming, handler.response_streaming)
    )
    make = getattr(grpc, f"{request}_{response}_rpc_method_handler")
    return make(refuse, request_deserializer=None, response_serializer=None)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls of restricted groups that carry no accepted token.

    Placed after the metrics interceptor, so refused calls are counted
    (code UNAUTHENTICATED, labels from the method, never from the caller).
    """

    def __init__(self, tokens: TokenFile, restricted: frozenset[AuthGroup]) -> None:
        self._tokens = tokens
        self._restricted = restricted

    def needs_token(self, method: str) -> bool:
        group = METHOD_GROUPS.get(method)
        return group is None or group in self._restricted

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.needs_token(method):
            return handler  # no such method (UNIMPLEMENTED), or an open group
        reason = refusal_reason(self._tokens, handler_call_details.invocation_metadata)
        return handler if reason is None else _refusing(handler, method, reason)
