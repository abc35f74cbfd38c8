"""Certificates and tokens replaced under a running server: new connections
and calls see the new ones, open connections keep working, files left
unusable halfway keep the current ones in force; never a restart."""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import socket
import ssl

import grpc
import pytest

from ats_client import AtsClient, AtsError
from tests.security.support import Pki, certificate_der, dev_certs, presented_certificate
from tests.support import random_image, wait_for


@pytest.fixture(scope="module")
def live(tmp_path_factory, pki) -> pathlib.Path:
    """The files the server reads, to be replaced: the first PKI's server certificate, a token."""
    folder = tmp_path_factory.mktemp("live")
    for name in ("server.pem", "server-key.pem"):
        shutil.copy2(pki.path(name), folder / name)
    dev_certs.write(folder / "tokens", f"{pki.token}\n".encode(), 0o600)
    return folder


@pytest.fixture(scope="module")
def server(serve, live, pki):
    cert, key = str(live / "server.pem"), str(live / "server-key.pem")
    return serve(
        *("--tls-cert", cert, "--tls-key", key, "--metrics-tls-cert", cert, "--metrics-tls-key", key),
        *("--auth-tokens-file", str(live / "tokens")),
        client={"tls_ca": pki.path("ca.pem"), "token": pki.token},
    )


def replace_certificate(live: pathlib.Path, source: Pki) -> None:
    """Install ``source``'s server certificate as a deployment tool would: each file replaced whole."""
    dev_certs.write(live / "server-key.pem", (source.folder / "server-key.pem").read_bytes(), 0o600)
    dev_certs.write(live / "server.pem", (source.folder / "server.pem").read_bytes(), 0o644)


def handshake_fails(port: int, ca: str) -> bool:
    """Whether a new connection trusting only ``ca`` refuses the server's certificate."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            context.wrap_socket(raw, server_hostname="localhost").close()
    except ssl.SSLCertVerificationError:
        return True
    return False


def test_a_key_that_is_not_the_certificates_keeps_the_current_certificate(server, live, pki, other_pki):
    dev_certs.write(live / "server-key.pem", (other_pki.folder / "server-key.pem").read_bytes(), 0o600)
    try:
        assert presented_certificate(server.port) == certificate_der(pki.path("server.pem"))
        with AtsClient(server.target, retries=0, **server.client_options) as client:
            assert client.health() == "SERVING"
        wait_for(
            lambda: "is not the key of the certificate" in server.log(), timeout=10, what="the error logged"
        )
        assert "new connections keep the current certificate until this is fixed" in server.log()
    finally:
        dev_certs.write(live / "server-key.pem", (pki.folder / "server-key.pem").read_bytes(), 0o600)


def test_a_rotated_certificate_serves_new_connections_while_open_ones_go_on(server, live, pki, other_pki):
    pid = server.process.pid
    with AtsClient(server.target, retries=0, **server.client_options) as opened:
        assert opened.predict(random_image(64, 64), n_patches=1).model_name == "tiny"
        replace_certificate(live, other_pki)

        new = certificate_der(other_pki.path("server.pem"))
        assert presented_certificate(server.port) == new
        assert presented_certificate(server.metrics_port) == new  # the metrics endpoint too
        assert handshake_fails(server.port, pki.path("ca.pem"))
        with AtsClient(server.target, retries=0, tls_ca=other_pki.path("ca.pem"), token=pki.token) as fresh:
            assert fresh.predict(random_image(64, 64), n_patches=1).model_name == "tiny"

        # the connection opened before the rotation keeps its session
        assert opened.predict(random_image(64, 64), n_patches=1).model_name == "tiny"
    assert server.process.pid == pid and server.process.poll() is None
    assert "--tls-cert reloaded: CN=ats-server" in server.log()
    assert "--metrics-tls-cert reloaded: CN=ats-server" in server.log()


def test_a_rotated_token_file_takes_effect_without_a_restart(server, live, other_pki):
    options = {"tls_ca": other_pki.path("ca.pem"), "retries": 0}
    old, new = server.client_options["token"], secrets.token_urlsafe(24)
    dev_certs.write(live / "tokens", f"{new}\n".encode(), 0o600)
    with AtsClient(server.target, token=new, **options) as client:
        assert client.list_models().default_model == "tiny"
    with AtsClient(server.target, token=old, **options) as client, pytest.raises(AtsError) as refused:
        client.list_models()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "reloaded: 1 token(s)" in server.log()

    # left readable by everyone with a plain token in it: refused, the tokens in force stay
    (live / "tokens").write_text(f"{old}\n")
    os.chmod(live / "tokens", 0o644)
    with AtsClient(server.target, token=new, **options) as client:
        assert client.list_models().default_model == "tiny"
    with AtsClient(server.target, token=old, **options) as client, pytest.raises(AtsError):
        client.list_models()
    assert "holds plain tokens and is readable by every user" in server.log()
    assert "the previous tokens stay in force" in server.log()
