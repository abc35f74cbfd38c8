"""gRPC-level metrics for every method (health and reflection included), in
the go-grpc-prometheus naming users already have dashboards for."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from service.budget import DEADLINE_SLACK
from service.metrics import Metrics

_KINDS = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}
_WRAPPERS = {
    "unary": ("unary_unary", grpc.unary_unary_rpc_method_handler),
    "client_stream": ("stream_unary", grpc.stream_unary_rpc_method_handler),
    "server_stream": ("unary_stream", grpc.unary_stream_rpc_method_handler),
    "bidi_stream": ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _final_code(context: grpc.aio.ServicerContext, outcome: str) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if outcome == "cancelled":
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining < DEADLINE_SLACK else "CANCELLED"
    return "UNKNOWN" if outcome == "failed" else "OK"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
        attribute, make_handler = _WRAPPERS[kind]
        labels = (kind, service, method)
        behavior = getattr(handler, attribute)
        wrapped = (
            self._wrap_generator(behavior, labels)
            if inspect.isasyncgenfunction(behavior)
            else self._wrap_coroutine(behavior, labels)
        )
        return make_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @contextlib.contextmanager
    def _recorded(self, labels: tuple[str, str, str], context: grpc.aio.ServicerContext) -> Iterator[None]:
        self._metrics.grpc_started.labels(*labels).inc()
        started, outcome = time.perf_counter(), "failed"
        try:
            yield
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._metrics.grpc_handled.labels(*labels, _final_code(context, outcome)).inc()
            self._metrics.grpc_handling_seconds.labels(*labels).observe(time.perf_counter() - started)

    def _wrap_coroutine(self, behavior: Callable, labels: tuple[str, str, str]) -> Callable:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._recorded(labels, context):
                return await behavior(request, context)

        return wrapped

    def _wrap_generator(self, behavior: Callable, labels: tuple[str, str, str]) -> Callable:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self._recorded(labels, context):
                async for response in behavior(request, context):
                    yield response

        return wrapped
