"""The audit trail of refused calls: one log line each, on the logger
``service.audit`` (route it apart with the logging configuration), saying
when, who (peer address, and client certificate when mutual TLS names one),
which method and why. Never the token, nor any other metadata value.

Every front end reports its refusals here: gRPC ones with :func:`refused_call`,
others (an HTTP front end) with :func:`refused`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import grpc

from service.errors import clip

log = logging.getLogger("service.audit")


def refused(peer: str, method: str, reason: str, identities: Iterable[bytes] = ()) -> None:
    """Record a call of ``method`` from ``peer`` refused for ``reason`` (the record carries the time);
    ``identities``: the names of the client's certificate."""
    client = ", ".join(clip(i.decode("utf-8", errors="replace")) for i in identities) or "none"
    method, peer = clip(method), clip(peer)  # an HTTP path is client text
    log.warning(
        "refused %s from %s (client certificate: %s): %s",
        method,
        peer,
        client,
        reason,
        extra={
            "fields": {
                "audit": "refused",
                "method": method,
                "peer": peer,
                "client_certificate": client,
                "reason": reason,
            }
        },
    )


def refused_call(context: grpc.aio.ServicerContext, method: str, reason: str) -> None:
    """Record a refused gRPC call."""
    refused(context.peer(), method, reason, context.peer_identities() or ())
