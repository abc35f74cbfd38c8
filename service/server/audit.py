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
from typing import Any

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


def socket_peer(peername: Any) -> str:
    """A socket's peer address written as gRPC writes its peers (``ipv4:127.0.0.1:5000``,
    ``ipv6:[::1]:5000``), so the audit trail reads alike for every front end."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = str(peername[0]), peername[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return str(peername or "unknown")


def certificate_names(peercert: Any) -> list[bytes]:
    """The identities of a verified client certificate as ``ssl`` reports it
    (``getpeercert()``): its subject alternative names, else its common name,
    which is what gRPC's ``peer_identities`` gives."""
    if not peercert:
        return []
    names = [str(value).encode() for _, value in peercert.get("subjectAltName", ())]
    if names:
        return names
    return [
        str(value).encode()
        for part in peercert.get("subject", ())
        for key, value in part
        if key == "commonName"
    ]
