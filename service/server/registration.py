"""A request that does not parse is the client's error, not the server's.

gRPC deserializes requests before the servicer runs; a damaged message then
ends as UNKNOWN or INTERNAL, with the parser's exception text sent back.
Two ways out, both with tolerant deserializers that turn bytes that do not
parse into a :class:`Malformed` value:

* :func:`add_servicer` registers a front end of ours, which receives the
  Malformed value and refuses it through the data plane like any other bad
  input (counted with the model's metrics);
* :class:`ParseErrorInterceptor` covers every other service (health,
  reflection): a Malformed request ends the call with INVALID_ARGUMENT
  before or while the stock servicer runs.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError

from service.errors import InvalidInput, clip
from service.server import status

Context: TypeAlias = grpc.aio.ServicerContext


class Malformed:
    """A request message whose bytes did not parse."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.error = InvalidInput(
            f"the {type_name} message does not parse as protobuf: {clip(str(error))}", field="message"
        )


M = TypeVar("M")


def parsed(message: M | Malformed) -> M:
    """``message``, or its parse error raised as INVALID_ARGUMENT."""
    if isinstance(message, Malformed):
        raise message.error
    return message


async def parsed_or_abort(message: M | Malformed, context: Context) -> M:
    """``message``, or the call ended with its parse error, for RPCs that
    answer without the data plane (server liveness, readiness, metadata)."""
    if isinstance(message, Malformed):
        await status.abort(context, message.error)
    return message


def _tolerant(parse: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RuntimeWarning, ValueError) as err:
            return Malformed(type_name, err)

    deserialize.tolerant = True  # type: ignore[attr-defined]  # marks handlers that see Malformed
    return deserialize


class _Unparsable(BaseException):
    """Carries a Malformed stream message out of a stock servicer, past its
    ``except Exception`` clauses, to the interceptor that ends the call."""

    def __init__(self, malformed: Malformed) -> None:
        self.malformed = malformed


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            raise _Unparsable(request)
        yield request


class ParseErrorInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for a request of any other service that does not parse."""

    async def intercept_service(
        self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or getattr(handler.request_deserializer, "tolerant", False):
            return handler
        kind = (handler.request_streaming, handler.response_streaming)
        attribute = _ATTRIBUTES[kind]
        behavior = getattr(handler, attribute)
        name = handler_call_details.method.rpartition("/")[2]

        def guarded(request: Any) -> Any:
            return _checked(request) if handler.request_streaming else request

        if inspect.isasyncgenfunction(behavior):

            async def wrapped_generator(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    if isinstance(request, Malformed):
                        raise _Unparsable(request)
                    async for response in behavior(guarded(request), context):
                        yield response
                except _Unparsable as unparsable:
                    await status.abort(context, unparsable.malformed.error)

            wrapped: Callable = wrapped_generator
        else:

            async def wrapped_coroutine(request: Any, context: Context) -> Any:
                try:
                    if isinstance(request, Malformed):
                        raise _Unparsable(request)
                    return await behavior(guarded(request), context)
                except _Unparsable as unparsable:
                    await status.abort(context, unparsable.malformed.error)

            wrapped = wrapped_coroutine
        return _HANDLERS[kind](
            wrapped,
            request_deserializer=_tolerant(handler.request_deserializer or bytes, name),
            response_serializer=handler.response_serializer,
        )


_ATTRIBUTES = {
    (False, False): "unary_unary",
    (True, False): "stream_unary",
    (False, True): "unary_stream",
    (True, True): "stream_stream",
}
_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_servicer(server: grpc.aio.Server, servicer: object, service: descriptor.ServiceDescriptor) -> None:
    """Serve every method of ``service`` with the same-named method of ``servicer``."""
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make = _HANDLERS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(request.FromString, method.input_type.name),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
