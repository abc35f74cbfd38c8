"""TLS from PEM files for the gRPC port, the HTTP/REST port and the metrics endpoint, re-read
when the files change, so a certificate rotation needs no restart.

The files are checked before they are used, with messages that say what to
fix: the certificate parses, the key is not encrypted and belongs to the
certificate, the key is private (:func:`service.server.files.exposure`). A
rotation that leaves them unusable (the certificate written, the key not
yet) is logged and the current certificate keeps serving until the files
are consistent again. New connections get the new certificate; open ones
keep theirs.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from service.server.files import CredentialFileError, Stamp, read_private, read_public, stamp

log = logging.getLogger(__name__)

T = TypeVar("T")
_PUBLIC = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one endpoint, and the flag prefix that names them in messages."""

    cert: str
    key: str
    client_ca: str
    flag: str

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert, self.key, self.client_ca) if p)


@dataclasses.dataclass(frozen=True)
class Material:
    """The checked contents of a :class:`TlsFiles`."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    leaf: x509.Certificate


def _certificates(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialFileError(f"{what} holds no PEM certificate") from None


def load(files: TlsFiles) -> Material:
    """Read and check ``files``; CredentialFileError says what is wrong."""
    cert_what, key_what = f"{files.flag}-cert {files.cert}", f"{files.flag}-key {files.key}"
    cert = read_public(files.cert, f"{files.flag}-cert")
    key = read_private(files.key, f"{files.flag}-key")
    leaf = _certificates(cert, cert_what)[0]
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise CredentialFileError(f"{key_what} is encrypted: give the server an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialFileError(f"{key_what} holds no PEM private key") from None
    if private.public_key().public_bytes(*_PUBLIC) != leaf.public_key().public_bytes(*_PUBLIC):
        raise CredentialFileError(f"{key_what} is not the key of the certificate in {cert_what}")
    client_ca = None
    if files.client_ca:
        client_ca = read_public(files.client_ca, f"{files.flag}-client-ca")
        _certificates(client_ca, f"{files.flag}-client-ca {files.client_ca}")
    return Material(cert, key, client_ca, leaf)


def describe(material: Material) -> str:
    """Subject and expiry of the certificate, for the log."""
    return (
        f"{material.leaf.subject.rfc4514_string()}, valid until {material.leaf.not_valid_after_utc:%Y-%m-%d}"
    )


class WatchedTls(Generic[T]):
    """The TLS files of one endpoint, and what ``build`` makes of them (a gRPC
    certificate configuration, an SSL context), rebuilt when the files change.

    Safe to call from any thread: gRPC asks on every new connection, the
    metrics endpoint on every scrape.
    """

    def __init__(self, files: TlsFiles, build: Callable[[TlsFiles, Material], T]) -> None:
        self.files = files
        self._build = build
        self._lock = threading.Lock()
        self._stamp = stamp(files.paths)
        self._refused: Stamp | None = None
        material = load(files)  # unusable files stop the start
        self.current = build(files, material)
        log.info("%s-cert: %s", files.flag, describe(material))

    def refresh(self) -> T | None:
        """The rebuilt value when the files changed and are usable, else None."""
        with self._lock:
            current = stamp(self.files.paths)  # before reading: a change while reading is seen next time
            if current in (self._stamp, self._refused):
                return None
            try:
                material = load(self.files)
                built = self._build(self.files, material)
            except CredentialFileError as error:
                log.error("%s; new connections keep the current certificate until this is fixed", error)
                self._refused = current
                return None
            self._stamp, self.current = current, built
            log.info("%s-cert reloaded: %s", self.files.flag, describe(material))
            return built


def grpc_configuration(files: TlsFiles, material: Material) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.client_ca)


def grpc_credentials(watched: WatchedTls[grpc.ServerCertificateConfiguration]) -> grpc.ServerCredentials:
    """Server credentials that ask ``watched`` for new files before every handshake."""
    return grpc.dynamic_ssl_server_credentials(
        watched.current, watched.refresh, require_client_authentication=bool(watched.files.client_ca)
    )


def ssl_context(files: TlsFiles, material: Material) -> ssl.SSLContext:
    """A server context for the metrics endpoint (TLS 1.2 or later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # ssl reads the files again: a rotation in between fails here and is retried
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as error:
        raise CredentialFileError(f"{files.flag}-cert {files.cert}: {error}") from None
    if material.client_ca is not None:
        context.load_verify_locations(cadata=material.client_ca.decode("ascii", errors="replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def ssl_contexts(watched: WatchedTls[ssl.SSLContext]) -> Callable[[], ssl.SSLContext]:
    """The current SSL context, refreshed from the files, for each new connection."""

    def current() -> ssl.SSLContext:
        watched.refresh()
        return watched.current

    return current


def rotating_ssl_context(watched: WatchedTls[ssl.SSLContext]) -> ssl.SSLContext:
    """One SSL context for a server that takes a single one for all its
    connections (asyncio's, so aiohttp's): each new connection's handshake
    switches to the current context, refreshed from the files first, so a
    rotated certificate serves new connections and open ones keep theirs.

    The switch happens in the SNI callback, which OpenSSL calls for every
    ClientHello, with or without a server name."""
    current = ssl_contexts(watched)
    base = ssl_context(watched.files, load(watched.files))

    def switch(connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = current()

    base.sni_callback = switch
    return base
