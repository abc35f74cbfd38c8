"""TLS and mutual TLS on the gRPC port, with real certificates made by the
development-CA script: who gets through and who does not; the plaintext
health-only port; the refusals at start (TLS half configured, keys others
can read, a key of another certificate); the secure defaults."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from ats_client import AtsClient, AtsError
from bench.common import free_port
from service.config import Config, load_config
from service.server.app import exposure_warnings
from service.server.files import exposure
from tests.security.support import ats_serve, certificate_der, presented_certificate
from tests.support import random_image


def refused_connection(target: str, **options) -> grpc.StatusCode:
    """The code a health check ends with from a client with ``options``."""
    with AtsClient(target, retries=0, timeout=10, **options) as client, pytest.raises(AtsError) as refused:
        client.health()
    return refused.value.code


def test_the_good_client_predicts(mutual_tls_server, pki):
    with AtsClient(mutual_tls_server.target, retries=0, **mutual_tls_server.client_options) as client:
        assert client.health() == "SERVING"
        assert client.predict(random_image(64, 64), n_patches=2).model_name == "tiny"
    assert certificate_der(pki.path("server.pem")) == presented_certificate(mutual_tls_server.port, pki)


def test_a_plaintext_client_cannot_talk_to_the_tls_port(mutual_tls_server):
    assert refused_connection(mutual_tls_server.target) == grpc.StatusCode.UNAVAILABLE


def test_a_client_trusting_another_ca_refuses_the_server(mutual_tls_server, pki, other_pki):
    options = pki.client(tls_ca=other_pki.path("ca.pem"))
    assert refused_connection(mutual_tls_server.target, **options) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_without_a_certificate(mutual_tls_server, pki):
    options = {"tls_ca": pki.path("ca.pem")}
    assert refused_connection(mutual_tls_server.target, **options) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_certificate_of_another_ca(mutual_tls_server, pki, other_pki):
    options = {**other_pki.client(), "tls_ca": pki.path("ca.pem")}
    assert refused_connection(mutual_tls_server.target, **options) == grpc.StatusCode.UNAVAILABLE


def test_the_secure_deployment_starts_without_warnings(mutual_tls_server):
    log = mutual_tls_server.log()
    assert (
        "gRPC listening on 0.0.0.0" in log and "(mutual TLS; tokens needed for: inference, metadata)" in log
    )
    assert "INSECURE" not in log


def test_the_health_port_is_plaintext_and_serves_health_only(serve, pki):
    health_port = free_port()
    server = serve(*pki.server_flags(mutual=False), "--health-port", str(health_port), client=pki.client())
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        for call in (
            lambda: pb_grpc.AttentionSamplingStub(channel).ListModels(pb.ListModelsRequest(), timeout=10),
            lambda: next(
                reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            ),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert refused_connection(server.target) == grpc.StatusCode.UNAVAILABLE  # the main port stays TLS


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "server.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "server-key.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--metrics-tls-cert", "server.pem"], "--metrics-tls-cert and --metrics-tls-key go together"),
        (["--metrics-tls-client-ca", "ca.pem"], "--metrics-tls-client-ca needs --metrics-tls-cert"),
        (["--auth-groups", "inference,admin"], "--auth-groups: unknown admin"),
        (
            ["--auth-tokens-file", "tokens.sha256", "--auth-groups", "health", "--health-port", "8503"],
            "--health-port serves health without a token, but --auth-groups restricts health",
        ),
    ],
)
def test_half_configured_security_is_refused_at_once(pki, flags, message):
    done = ats_serve(*(pki.path(f) if f.endswith((".pem", ".sha256")) else f for f in flags))
    assert done.returncode == 2 and message in done.stderr, done.stderr


@pytest.fixture()
def bad_files(tmp_path, pki, other_pki) -> dict[str, list[str]]:
    """ats-serve TLS flags whose files must stop the start, by what is wrong."""
    shutil.copy(pki.path("server.pem"), tmp_path / "server.pem")
    for name, mode in (("world", 0o644), ("group", 0o640)):
        shutil.copy(pki.path("server-key.pem"), tmp_path / f"{name}-key.pem")
        os.chmod(tmp_path / f"{name}-key.pem", mode)
    cert = str(tmp_path / "server.pem")
    return {
        "is readable by every user (mode 0644)": [
            "--tls-cert",
            cert,
            "--tls-key",
            str(tmp_path / "world-key.pem"),
        ],
        "is readable by its group (mode 0640)": [
            "--tls-cert",
            cert,
            "--tls-key",
            str(tmp_path / "group-key.pem"),
        ],
        "is not the key of the certificate": [
            "--tls-cert",
            cert,
            "--tls-key",
            other_pki.path("server-key.pem"),
        ],
        "holds no PEM certificate": [
            "--tls-cert",
            pki.path("server-key.pem"),
            "--tls-key",
            pki.path("server-key.pem"),
        ],
    }


@pytest.mark.parametrize(
    "problem",
    [
        "is readable by every user (mode 0644)",
        "is readable by its group (mode 0640)",
        "is not the key of the certificate",
        "holds no PEM certificate",
    ],
)
def test_unusable_tls_files_stop_the_start(bad_files, problem):
    done = ats_serve(*bad_files[problem])
    assert done.returncode != 0
    assert "cannot start: --tls-" in done.stderr and problem in done.stderr, done.stderr


def test_who_may_read_a_key():
    """Never others; the group only when another user owns the file (a
    Kubernetes Secret volume: root-owned, shared with the pod's fsGroup)."""
    server, root = 10001, 0
    assert exposure(stat.S_IFREG | 0o600, server, server) is None
    assert exposure(stat.S_IFREG | 0o400, server, server) is None
    assert exposure(stat.S_IFREG | 0o440, root, server) is None
    assert exposure(stat.S_IFREG | 0o640, root, server) is None
    assert "group" in exposure(stat.S_IFREG | 0o640, server, server)
    assert "group" in exposure(stat.S_IFREG | 0o440, server, server)
    assert "every user" in exposure(stat.S_IFREG | 0o444, root, server)
    assert "every user" in exposure(stat.S_IFREG | 0o604, server, server)


def test_a_bare_server_binds_loopback_only():
    config, _ = load_config([], environ={})
    assert config.host == "127.0.0.1" and config.metrics_host == ""
    assert exposure_warnings(config) == []


def test_every_open_door_is_warned_about():
    everything_open = Config(host="0.0.0.0")
    warned = exposure_warnings(everything_open)
    assert len(warned) == 5
    assert "gRPC listens on 0.0.0.0:8500" in warned[0] and "gRPC listens on 0.0.0.0:8500" in warned[1]
    assert "without TLS" in warned[0] and "without tokens for inference" in warned[1]
    # the HTTP/REST port shares the gRPC port's TLS and tokens, and is warned about by its own number
    assert "HTTP/REST (Open Inference Protocol) listens on 0.0.0.0:8501 without TLS" in warned[2]
    assert "8501 without tokens for inference" in warned[3] and "--http-port 0" in warned[3]
    assert "metrics served over plain HTTP on 0.0.0.0:8502" in warned[4]
    assert not [
        w for w in exposure_warnings(dataclasses.replace(everything_open, http_port=0)) if "8501" in w
    ]
    secured = Config(
        host="0.0.0.0",
        tls_cert="c",
        tls_key="k",
        auth_tokens_file="t",
        metrics_tls_cert="c",
        metrics_tls_key="k",
    )
    assert exposure_warnings(secured) == []
    inference_open = dataclasses.replace(secured, auth_groups="metadata")
    assert [w for w in exposure_warnings(inference_open) if "whoever reaches it can run the models" in w]
    assert (
        exposure_warnings(
            Config(host="0.0.0.0", tls_cert="c", tls_key="k", tls_client_ca="a", metrics_host="localhost")
        )
        == []
    )
