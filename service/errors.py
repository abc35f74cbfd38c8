"""The one error tree of the service.

Everything below the protocol layer (data plane, pipeline, image sources,
model registry) raises these and nothing protocol-specific. Each class names
its outcome as a canonical status code (the google.rpc.Code space, which
gRPC and HTTP APIs share); each protocol front end maps codes to its own
statuses in one place (``service.server.status`` for gRPC), and metrics
count the code's name.
"""

from __future__ import annotations

import enum
from typing import ClassVar

# Longest piece of client text (a model name, a path) echoed in a message:
# enough to recognise it, too little to turn an error into an amplifier.
CLIP_CHARS = 120
# Longest message a status carries, whatever built it.
MAX_MESSAGE_CHARS = 1024


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """``text`` quoted for a message or log line, cut to ``limit`` characters.

    Use it wherever client text goes into an error or a log: a 5 MB model
    name must not come back as a 5 MB error (or break the response headers).
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class Code(str, enum.Enum):
    """Canonical outcome of a request; equal to its name as a string."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class ServiceError(Exception):
    """Base: a request the service refuses or cannot finish; the server stays up.

    ``field`` names the request field at fault (reported to clients as a
    google.rpc.BadRequest field violation), when there is one.
    """

    code: ClassVar[Code] = Code.INTERNAL

    def __init__(self, message: str, field: str | None = None) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "... (message cut)"
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(ServiceError):
    """Corrupt, truncated or unknown image; wrong tensor; option out of range."""

    code = Code.INVALID_ARGUMENT


class TooLarge(ServiceError):
    """Image over the configured pixel or byte limits."""

    code = Code.RESOURCE_EXHAUSTED


class AtCapacity(ServiceError):
    """Every prediction slot stayed busy for the queue timeout."""

    code = Code.RESOURCE_EXHAUSTED


class NotFound(ServiceError):
    """Unknown model or version, or a referenced file that does not exist."""

    code = Code.NOT_FOUND


class PermissionDenied(ServiceError):
    """A reference that would read outside the data root, or a file that is
    not a regular file (device, FIFO, socket)."""

    code = Code.PERMISSION_DENIED


class Unsupported(ServiceError):
    """A source kind this server does not serve."""

    code = Code.UNIMPLEMENTED


class Unavailable(ServiceError):
    """The model exists but no version of it is ready yet."""

    code = Code.UNAVAILABLE


class Cancelled(ServiceError):
    """The caller cancelled the call: stop working."""

    code = Code.CANCELLED


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed: stop working."""

    code = Code.DEADLINE_EXCEEDED


class Stalled(ServiceError):
    """An upload that stopped arriving: no header, or no next chunk, within
    the server's upload timeouts. The server gives up on it as on a deadline."""

    code = Code.DEADLINE_EXCEEDED
