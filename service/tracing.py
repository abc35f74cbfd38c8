"""OpenTelemetry spans for requests, pipeline stages, the batch queue and tile
reads; off unless ``--tracing``.

Off, :func:`span` hands back one shared no-op span: no SDK call, no
allocation, so the stages may be wrapped unconditionally. On, an SDK
``TracerProvider`` exports through whatever the standard variables name:
``OTEL_TRACES_EXPORTER`` (``otlp``, the default, over
``OTEL_EXPORTER_OTLP_PROTOCOL`` ``grpc`` or ``http/protobuf``; ``console``;
``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME`` (default
``ats-serve``), ``OTEL_TRACES_SAMPLER`` and its argument, ``OTEL_BSP_*``.

Span attributes are the server's own values (model names it resolved,
levels, sizes, codes), never client text, and errors are recorded by the
name of their type only: an error message may quote the request.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk._configuration import _get_exporter_entry_point, _get_exporter_names, _import_exporters
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

T = TypeVar("T")

# Attributes of this server's spans live under this prefix (ats.model, ats.level, ...).
PREFIX = "ats."
# What the SDK calls a service that OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES leave unnamed.
_UNNAMED = "unknown_service"

# The span every call gets while tracing is off: shared, and a no-op context manager.
OFF: trace.Span = trace.INVALID_SPAN

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def configure(enabled: bool, provider: TracerProvider | None = None) -> None:
    """Turn tracing on (with ``provider``, or one built from the OTEL_*
    variables) or off; a provider set before is shut down (flushed) first.

    Raises RuntimeError when OTEL_TRACES_EXPORTER names an exporter that is
    not installed (or OTEL_EXPORTER_OTLP_PROTOCOL a protocol that is not)."""
    global _provider, _tracer
    shutdown()
    if enabled:
        _provider = provider if provider is not None else _from_environment()
        _tracer = _provider.get_tracer(__name__)


def shutdown() -> None:
    """Export what is buffered and stop tracing (the server's drain calls this)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def enabled() -> bool:
    return _tracer is not None


def _from_environment() -> TracerProvider:
    """The SDK's own reading of the OTEL_* variables: the sampler and the
    batch processor's settings by their constructors, the exporter names by
    the SDK's configurator (what ``opentelemetry-instrument`` runs), whose
    exporters then read their endpoint, headers and timeouts themselves."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith(_UNNAMED):
        resource = resource.merge(Resource({SERVICE_NAME: "ats-serve"}))
    provider = TracerProvider(resource=resource)
    if OTEL_TRACES_EXPORTER in os.environ:
        names = _get_exporter_names("traces")
    else:  # the specification's default, which the configurator leaves to distributions
        names = [_get_exporter_entry_point("otlp", "traces")]
    exporters, _, _ = _import_exporters(names, [], [])
    for exporter in exporters.values():
        provider.add_span_processor(BatchSpanProcessor(exporter()))
    return provider


def span(name: str, **attributes: AttributeValue) -> AbstractContextManager[trace.Span]:
    """A span around a ``with`` block, child of the current one; keyword
    attributes are recorded as ``ats.<keyword>``. Off, the shared :data:`OFF`."""
    tracer = _tracer
    if tracer is None:
        return OFF
    return _recorded(tracer, name, {PREFIX + key: value for key, value in attributes.items()})


def record(name: str, start: float, end: float, **attributes: AttributeValue) -> None:
    """A span for what already happened from ``start`` to ``end`` (seconds
    since the epoch, as ``time.time()`` and ``tf.timestamp()`` give them),
    child of the current span: the stages timed inside one graph."""
    tracer = _tracer
    if tracer is None:
        return
    attributes = {PREFIX + key: value for key, value in attributes.items()}
    tracer.start_span(name, start_time=round(start * 1e9), attributes=attributes).end(round(end * 1e9))


@contextlib.contextmanager
def _recorded(tracer: trace.Tracer, name: str, attributes: dict[str, AttributeValue]) -> Iterator[trace.Span]:
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as error:
            current.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise


@contextlib.contextmanager
def continued(headers: Mapping[str, str]) -> Iterator[None]:
    """Inside the block, the trace a request's W3C ``traceparent`` header
    names is the current one (HTTP front ends; gRPC's interceptor does this
    for gRPC calls); nothing while tracing is off."""
    if _tracer is None:
        yield
        return
    token = otel_context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        otel_context.detach(token)


def bind(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` to run in another thread as a child of the current span
    (``run_in_executor`` does not carry context variables across); ``fn``
    itself while tracing is off."""
    if _tracer is None:
        return fn
    return functools.partial(contextvars.copy_context().run, fn)


def server_interceptors(services: Iterable[ServiceDescriptor]) -> list[grpc.aio.ServerInterceptor]:
    """The gRPC server span of each call to a method of ``services``, child of
    the W3C ``traceparent`` the caller sent in its metadata; none while off.

    Other services (health probes, reflection) are left out, and so are
    methods no service has, whose names are whatever a client sent."""
    if _provider is None:
        return []
    methods = frozenset(
        f"/{service.full_name}/{method.name}" for service in services for method in service.methods
    )
    return [aio_server_interceptor(tracer_provider=_provider, filter_=lambda call: call.method in methods)]
