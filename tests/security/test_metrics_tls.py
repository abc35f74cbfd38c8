"""The metrics endpoint over HTTPS with client certificates, on an address
of its own, scraped by a real Prometheus configured as the compose stack's
(docker/prometheus/prometheus.yml, its certificate paths pointed at files
made here)."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request

import pytest

from tests.security.support import Pki, compose_scrape_job
from tests.support import Prometheus, wait_for

METRICS_HOST = "127.0.0.2"  # a loopback address other than the gRPC port's


@pytest.fixture(scope="module")
def metrics_pki(tmp_path_factory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("metrics-pki"), names=(METRICS_HOST,))


@pytest.fixture(scope="module")
def server(serve, metrics_pki):
    return serve(
        "--metrics-host",
        METRICS_HOST,
        "--metrics-tls-cert",
        metrics_pki.path("server.pem"),
        "--metrics-tls-key",
        metrics_pki.path("server-key.pem"),
        "--metrics-tls-client-ca",
        metrics_pki.path("ca.pem"),
    )


def https_context(pki: Pki, certificate: str | None = "prometheus") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.path("ca.pem"))
    if certificate:
        context.load_cert_chain(pki.path(f"{certificate}.pem"), pki.path(f"{certificate}-key.pem"))
    return context


def fetch(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=5, context=context) as reply:
        return reply.read().decode()


def test_prometheus_scrapes_the_https_endpoint_with_the_compose_job(server, metrics_pki, tmp_path):
    prometheus = Prometheus(
        tmp_path, f"{METRICS_HOST}:{server.metrics_port}", compose_scrape_job(metrics_pki)
    )
    try:
        prometheus.wait_ready()
        wait_for(
            lambda: prometheus.value('up{job="ats-server"}') == 1,
            timeout=60,
            what=f"Prometheus scraping over HTTPS (log: {prometheus.log_path})",
        )
        assert prometheus.value('ats_model_ready{model="tiny",version="1"}') == 1
        assert prometheus.value('grpc_server_handled_total{grpc_method="Check",grpc_code="OK"}') >= 1
    finally:
        prometheus.stop()


def test_the_endpoint_speaks_https_to_certified_scrapers_only(server, metrics_pki, other_pki):
    url = f"https://{METRICS_HOST}:{server.metrics_port}/metrics"
    assert "ats_model_ready" in fetch(url, https_context(metrics_pki))
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        fetch(url.replace("https:", "http:"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        fetch(url, https_context(metrics_pki, certificate=None))
    other = https_context(metrics_pki, certificate=None)
    other.load_cert_chain(other_pki.path("client.pem"), other_pki.path("client-key.pem"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        fetch(url, other)


def test_a_silent_connection_does_not_hold_up_scrapes(server, metrics_pki):
    """prometheus-client's own TLS handshakes in its accepting thread, where a
    client that never sends a ClientHello blocks every scrape."""
    url = f"https://{METRICS_HOST}:{server.metrics_port}/metrics"
    with socket.create_connection((METRICS_HOST, server.metrics_port)):
        assert "ats_model_ready" in fetch(url, https_context(metrics_pki))


def test_metrics_bind_their_own_address(server, metrics_pki):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5).close()
    assert f"metrics on {METRICS_HOST}:{server.metrics_port} (HTTPS)" in server.log()
