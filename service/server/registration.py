"""Registers a servicer so that a request that does not parse is the
client's error, not the server's.

gRPC's generated registration deserializes requests before the servicer
runs; a damaged message then ends as UNKNOWN or INTERNAL with a stack trace
in the log. Here every request deserializer is tolerant: bytes that do not
parse arrive as a :class:`Malformed` value, which the servicer turns into
INVALID_ARGUMENT through the data plane like any other bad input (counted,
logged once, nothing else affected).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError

from service.errors import InvalidInput, clip


class Malformed:
    """A request message whose bytes did not parse."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.error = InvalidInput(
            f"the {type_name} message does not parse as protobuf: {clip(str(error))}", field="message"
        )


def _tolerant(parse: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RuntimeWarning, ValueError) as err:
            return Malformed(type_name, err)

    return deserialize


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
