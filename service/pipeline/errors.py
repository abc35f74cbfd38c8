"""Errors the pipeline raises, each carrying the gRPC status name it maps to.

The pipeline knows nothing of gRPC; the protocol layer turns ``code`` into a
status and ``field`` into a google.rpc.BadRequest field violation.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base: a request the pipeline refuses; the server stays up."""

    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(PipelineError):
    """Corrupt, truncated or unknown image; wrong tensor; option out of range."""

    code = "INVALID_ARGUMENT"


class TooLarge(PipelineError):
    """Image over the configured pixel or byte limits."""

    code = "RESOURCE_EXHAUSTED"


class NotFound(PipelineError):
    """Unknown model or version, or a referenced file that does not exist."""

    code = "NOT_FOUND"


class Unsupported(PipelineError):
    """A source kind this server does not implement."""

    code = "UNIMPLEMENTED"


class Cancelled(PipelineError):
    """The caller went away (cancelled or deadline passed): stop working."""

    code = "CANCELLED"
