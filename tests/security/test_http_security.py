"""The OIP HTTP/REST port under the gRPC port's TLS and tokens: its refusals
are audited on ``service.audit`` like gRPC ones (peer, client certificate,
reason; never the token), and its certificate is rotated with the gRPC
port's, for new connections, without a restart."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import urllib.error
import urllib.request

import pytest
from cryptography import x509

from tests.security.support import Pki, certificate_der, dev_certs, presented_certificate
from tests.support import TINY_MODEL, wait_for


def https(port: int, path: str, ca: str, token: str | None = None, client: Pki | None = None) -> int:
    """The status of one GET over HTTPS, trusting ``ca``."""
    context = ssl.create_default_context(cafile=ca)
    if client is not None:
        context.load_cert_chain(client.path("client.pem"), client.path("client-key.pem"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"https://localhost:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        assert json.loads(error.read())["error"]
        return error.code


@pytest.fixture(scope="module")
def token_server(serve, pki, tmp_path_factory):
    """TLS (no client certificates) and the script's tokens, default groups."""
    return serve(
        *pki.server_flags(mutual=False), "--auth-tokens-file", pki.path("tokens.sha256"), client=pki.client()
    )


def test_http_refusals_are_audited_like_grpc_ones(token_server, pki, other_pki):
    audited = token_server.log().count("service.audit: refused")
    metadata = f"/v2/models/{TINY_MODEL}"
    assert https(token_server.http_port, metadata, pki.path("ca.pem")) == 401
    assert https(token_server.http_port, metadata, pki.path("ca.pem"), token=other_pki.token) == 401
    assert https(token_server.http_port, metadata, pki.path("ca.pem"), token=pki.token) == 200
    assert https(token_server.http_port, "/v2/health/ready", pki.path("ca.pem")) == 200  # an open group
    wait_for(
        lambda: token_server.log().count("service.audit: refused") == audited + 2,
        timeout=10,
        what="two audit lines",
    )
    lines = [line for line in token_server.log().splitlines() if "service.audit: refused 'GET " in line]
    assert len(lines) == 2, lines
    for line in lines:
        assert f"refused 'GET {metadata}' from 'ipv4:127.0.0.1:" in line
        assert "(client certificate: none)" in line
    assert lines[0].endswith("no authorization metadata") and lines[1].endswith("unknown token")
    log = token_server.log()
    assert pki.token not in log and other_pki.token not in log


def test_an_http_refusal_names_the_client_certificate(mutual_tls_server, pki, other_pki):
    """Mutual TLS: the certificate's names (here its common name) are in the audit line, as for gRPC."""
    certificate = x509.load_pem_x509_certificate((pki.folder / "client.pem").read_bytes())
    (common_name,) = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    first = str(common_name.value)  # the script's client certificates name no alternative
    before = mutual_tls_server.log().count("service.audit: refused")
    port = mutual_tls_server.http_port
    assert https(port, f"/v2/models/{TINY_MODEL}", pki.path("ca.pem"), other_pki.token, client=pki) == 401
    wait_for(
        lambda: mutual_tls_server.log().count("service.audit: refused") == before + 1,
        timeout=10,
        what="the audit line",
    )
    (line,) = [line for line in mutual_tls_server.log().splitlines() if "refused 'GET /v2/models" in line]
    assert "(client certificate: none)" not in line and repr(first) in line and line.endswith("unknown token")
    # without a client certificate there is no connection at all
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        https(port, "/v2/health/live", pki.path("ca.pem"))


@pytest.fixture(scope="module")
def rotating(serve, pki, tmp_path_factory):
    """A server whose certificate files are replaced during the test."""
    live = tmp_path_factory.mktemp("http-live")
    for name in ("server.pem", "server-key.pem"):
        shutil.copy2(pki.path(name), live / name)
        os.chmod(live / name, 0o600)
    server = serve(
        *("--tls-cert", str(live / "server.pem"), "--tls-key", str(live / "server-key.pem")),
        client={"tls_ca": pki.path("ca.pem")},
    )
    return server, live


def test_the_http_certificate_is_rotated_for_new_connections(rotating, pki, other_pki):
    server, live = rotating
    assert presented_certificate(server.http_port) == certificate_der(pki.path("server.pem"))
    context = ssl.create_default_context(cafile=pki.path("ca.pem"))
    with urllib.request.urlopen(
        f"https://localhost:{server.http_port}/v2/health/live", context=context
    ) as old:
        assert old.status == 200

    dev_certs.write(live / "server-key.pem", (other_pki.folder / "server-key.pem").read_bytes(), 0o600)
    dev_certs.write(live / "server.pem", (other_pki.folder / "server.pem").read_bytes(), 0o644)
    new = certificate_der(other_pki.path("server.pem"))
    assert presented_certificate(server.http_port) == new
    assert presented_certificate(server.port) == new
    assert https(server.http_port, "/v2/health/live", other_pki.path("ca.pem")) == 200
    with pytest.raises(urllib.error.URLError) as refused:
        https(server.http_port, "/v2/health/live", pki.path("ca.pem"))
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    assert server.process.poll() is None
    wait_for(lambda: "--tls-cert reloaded: CN=ats-server" in server.log(), timeout=10, what="reload logged")
