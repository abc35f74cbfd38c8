"""Turns pipeline errors into gRPC statuses with google.rpc details, so a
client can tell which request field was wrong without parsing messages."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.pipeline.errors import PipelineError


def to_status(code: str, message: str, field: str | None = None) -> grpc.Status:
    """A status named ``code`` carrying a BadRequest violation on ``field``."""
    details = []
    if field:
        violation = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]
        )
        packed = any_pb2.Any()
        packed.Pack(violation)
        details.append(packed)
    status = status_pb2.Status(code=code_pb2.Code.Value(code), message=message, details=details)
    return rpc_status.to_status(status)


def abort(context: grpc.ServicerContext, error: PipelineError) -> None:
    """End the RPC with ``error``; raises, as ``context.abort`` does."""
    context.abort_with_status(to_status(error.code, error.message, error.field))
