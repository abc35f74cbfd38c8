"""The client's TLS and token options, library and ``ats-client``, against a
real server with mutual TLS and tokens."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import grpc
import pytest

from ats_client import AtsClient, AtsError
from ats_client.client import is_local
from tests.support import encode_image, random_image


def ats_client(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
    """``ats-client`` with ``ATS_TOKEN`` set to ``token`` (unset when None)."""
    env = {k: v for k, v in os.environ.items() if k != "ATS_TOKEN"}
    if token is not None:
        env["ATS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "ats_client.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def tls_flags(server, pki) -> list[str]:
    return [
        "--server",
        server.target,
        "--tls-ca",
        pki.path("ca.pem"),
        "--tls-cert",
        pki.path("client.pem"),
        "--tls-key",
        pki.path("client-key.pem"),
    ]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("image") / "image.png"
    path.write_bytes(encode_image(random_image(96, 96)))
    return path


def test_the_development_token_reads_as_a_flag_value(pki):
    assert re.fullmatch("[0-9a-f]{64}", pki.token)  # never "-...", which argparse takes for an option


def test_cli_predicts_with_certificates_and_a_token(mutual_tls_server, pki, image):
    done = ats_client("predict", str(image), "--token", pki.token, *tls_flags(mutual_tls_server, pki))
    assert done.returncode == 0 and done.stdout.startswith("model tiny v1: "), done.stderr


def test_cli_reads_the_token_from_the_environment(mutual_tls_server, pki):
    done = ats_client("models", *tls_flags(mutual_tls_server, pki), token=pki.token)
    assert done.returncode == 0 and done.stdout.startswith("tiny (default)"), done.stderr


def test_cli_without_a_token_is_refused_but_health_answers(mutual_tls_server, pki):
    refused = ats_client("models", *tls_flags(mutual_tls_server, pki))
    assert (
        refused.returncode == 2 and "error: UNAUTHENTICATED: this call needs a valid token" in refused.stderr
    )
    health = ats_client("health", *tls_flags(mutual_tls_server, pki))
    assert health.returncode == 0 and health.stdout.strip() == "SERVING", health.stderr


def test_cli_without_a_client_certificate_cannot_connect(mutual_tls_server, pki):
    done = ats_client("health", "--server", mutual_tls_server.target, "--tls-ca", pki.path("ca.pem"))
    assert done.returncode == 2 and "error: UNAVAILABLE" in done.stderr, done.stderr


def test_cli_refuses_half_a_client_certificate(pki):
    done = ats_client("health", "--tls-ca", pki.path("ca.pem"), "--tls-cert", pki.path("client.pem"))
    assert done.returncode == 2 and "a client certificate and its key go together" in done.stderr


def test_a_token_is_never_sent_in_clear_to_another_machine(pki):
    done = ats_client("models", "--server", "192.0.2.7:8500", token=pki.token)
    assert done.returncode == 2 and "a token is sent to 192.0.2.7:8500 over TLS only" in done.stderr
    with pytest.raises(ValueError, match="over TLS only"):
        AtsClient("ats.example.org:8500", token=pki.token)
    AtsClient("ats.example.org:8500", token=pki.token, tls=True).close()  # public CAs: allowed
    AtsClient("localhost:8500", token=pki.token).close()  # this machine: allowed


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("localhost:8500", True),
        ("127.0.0.1:8500", True),
        ("[::1]:8500", True),
        ("dns:///localhost:8500", True),
        ("ipv4:127.0.0.2:8500", True),
        ("unix:/run/ats.sock", True),
        ("10.0.0.1:8500", False),
        ("ats-server.default.svc:8500", False),
        ("dns:///ats-server-headless:8500", False),
        ("[2001:db8::1]:8500", False),
    ],
)
def test_which_targets_are_this_machine(target, local):
    assert is_local(target) is local


def test_library_takes_pem_bytes_as_well_as_paths(mutual_tls_server, pki):
    options = {key: pathlib.Path(path).read_bytes() for key, path in pki.client().items()}
    with AtsClient(mutual_tls_server.target, retries=0, token=pki.token, **options) as client:
        assert client.metadata().name == "tiny"
    with (
        AtsClient(mutual_tls_server.target, retries=0, **options) as client,
        pytest.raises(AtsError) as refused,
    ):
        client.list_models()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
