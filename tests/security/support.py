"""What the security tests share: certificates and tokens made by the
development-CA script itself (docker/make-dev-certs.py, so that every use
tests it), a look at the certificate a TLS port presents, and ats-serve run
to its end."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import ssl
import subprocess
import sys
from typing import Any

import yaml

from bench.common import load_dev_certs
from tests.support import REPO_ROOT, free_port

PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
# Where the compose stack gives Prometheus its files (named as make-dev-certs.py names them).
COMPOSE_PROMETHEUS_FILES = "/run/ats-secrets/prometheus/"


dev_certs = load_dev_certs()


@dataclasses.dataclass(frozen=True)
class Pki:
    """One run of the script: a CA, its server, client and Prometheus certificates, a token."""

    folder: pathlib.Path

    @classmethod
    def make(cls, folder: pathlib.Path, names: tuple[str, ...] = ()) -> Pki:
        """Run the script into ``folder``; ``names``: more names of the server."""
        dev_certs.make_all(folder, names)
        return cls(folder)

    def path(self, name: str) -> str:
        return str(self.folder / name)

    @property
    def token(self) -> str:
        return (self.folder / "token").read_text().strip()

    def server_flags(self, mutual: bool = True) -> list[str]:
        """ats-serve flags for TLS with this PKI's server certificate (and its CA for clients)."""
        flags = ["--tls-cert", self.path("server.pem"), "--tls-key", self.path("server-key.pem")]
        return [*flags, "--tls-client-ca", self.path("ca.pem")] if mutual else flags

    def client(self, **overrides: Any) -> dict[str, Any]:
        """AtsClient options trusting this CA and presenting its client certificate."""
        options = {
            "tls_ca": self.path("ca.pem"),
            "tls_cert": self.path("client.pem"),
            "tls_key": self.path("client-key.pem"),
        }
        return {**options, **overrides}


def compose_scrape_job(pki: Pki) -> dict[str, Any]:
    """The compose stack's scrape job of the server, reading its TLS files from ``pki``."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ats-server"]
    tls = job["tls_config"]
    for key in ("ca_file", "cert_file", "key_file"):
        assert tls[key].startswith(COMPOSE_PROMETHEUS_FILES), (key, tls[key])
        tls[key] = pki.path(tls[key].removeprefix(COMPOSE_PROMETHEUS_FILES))
    return job


def presented_certificate(port: int, client: Pki | None = None) -> bytes:
    """The DER certificate a new TLS connection to ``port`` is shown (nothing verified;
    ``client``'s certificate presented for servers that require one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.path("client.pem"), client.path("client-key.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def certificate_der(path: pathlib.Path | str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pathlib.Path(path).read_text())


def ats_serve(*flags: str) -> subprocess.CompletedProcess:
    """ats-serve run to its end: for the configurations it must refuse to start with."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "service.server.main",
            "--port",
            str(free_port()),
            "--metrics-port",
            "0",
            *flags,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
