"""gRPC-level metrics for every method (health and reflection included), in
the go-grpc-prometheus naming users already have dashboards for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

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


def _final_code(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is not None:
        return code.name
    if not context.is_active():
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN" if failed else "OK"


class MetricsInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        kind = _KINDS[(handler.request_streaming, handler.response_streaming)]
        attribute, make_handler = _WRAPPERS[kind]
        labels = (kind, service, method)
        wrapped = (self._wrap_streaming if handler.response_streaming else self._wrap_unary)(
            getattr(handler, attribute), labels
        )
        return make_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _record(
        self, labels: tuple[str, str, str], context: grpc.ServicerContext, started: float, failed: bool
    ) -> None:
        self._metrics.grpc_handled.labels(*labels, _final_code(context, failed)).inc()
        self._metrics.grpc_handling_seconds.labels(*labels).observe(time.perf_counter() - started)

    def _wrap_unary(self, behavior: Callable, labels: tuple[str, str, str]) -> Callable:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            self._metrics.grpc_started.labels(*labels).inc()
            started, failed = time.perf_counter(), True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                self._record(labels, context, started, failed)

        return wrapped

    def _wrap_streaming(self, behavior: Callable, labels: tuple[str, str, str]) -> Callable:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._metrics.grpc_started.labels(*labels).inc()
            started, failed = time.perf_counter(), True
            try:
                yield from behavior(request, context)
                failed = False
            finally:
                self._record(labels, context, started, failed)

        return wrapped
