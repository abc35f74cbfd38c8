"""The audit trail of refused calls: one log line each, on the logger
``service.audit`` (route it apart with the logging configuration), saying
when, who (peer address, and client certificate when mutual TLS names one),
which method and why. Never the token, nor any other metadata value."""

from __future__ import annotations

import logging

import grpc

from service.errors import clip

log = logging.getLogger("service.audit")


def refused(context: grpc.aio.ServicerContext, method: str, reason: str) -> None:
    """Record a call refused for ``reason`` (the log record carries the time)."""
    identities = context.peer_identities() or []
    client = ", ".join(clip(i.decode("utf-8", errors="replace")) for i in identities) or "none"
    peer = clip(context.peer())
    log.warning(
        "refused %s from %s (client certificate: %s): %s",
        clip(method),
        peer,
        client,
        reason,
        extra={
            "fields": {
                "audit": "refused",
                "method": method,
                "peer": context.peer(),
                "client_certificate": client,
                "reason": reason,
            }
        },
    )
