"""Prometheus metrics of the service (names are a shared contract: the Grafana
dashboard and alerting query them) and their HTTP endpoint."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer

if TYPE_CHECKING:
    from service.budget import MemoryBudget
    from service.pipeline.runner import Prediction
    from service.uploads import Uploads

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MEGAPIXEL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000, 10000)
PATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# Seconds an HTTPS scrape connection may take for its handshake, and then per read.
CONNECTION_TIMEOUT = 10.0

log = logging.getLogger(__name__)


class Metrics:
    """Every metric the server exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "ats_requests",
            "Calls of every protocol (ats.v1, oip.grpc, oip.http, tfserving), by outcome",
            ["model", "version", "protocol", "rpc", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "ats_request_seconds",
            "Time from a prediction's start (body, upload, queue) to its answer, predictions that succeeded",
            ["model", "protocol", "rpc"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "ats_stage_seconds",
            "Time per pipeline stage of a prediction",
            ["model", "stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.image_megapixels = Histogram(
            "ats_image_megapixels",
            "Full-resolution size of predicted images",
            ["model"],
            buckets=MEGAPIXEL_BUCKETS,
            registry=registry,
        )
        self.patches = Counter(
            "ats_patches", "High-resolution patches processed", ["model"], registry=registry
        )
        self.patches_per_request = Histogram(
            "ats_patches_per_request",
            "Patches per prediction",
            ["model"],
            buckets=PATCH_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "ats_batch_size",
            "Requests per graph call of the batcher (their queue time is ats_stage_seconds, stage queue)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge("ats_requests_in_flight", "Predictions being served", registry=registry)
        self.model_load_seconds = Gauge(
            "ats_model_load_seconds",
            "Load and warm-up time of a model version",
            ["model", "version"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "ats_model_ready",
            "1 while a model version serves, else 0",
            ["model", "version"],
            registry=registry,
        )
        self.grpc_started = Counter(
            "grpc_server_started",
            "RPCs started on the server",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from RPC start to its status",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        # Tile-reference readers (issue 5) count into these; they exist from the
        # start so dashboards and alerts see zeros rather than missing series.
        self.tile_bytes_read = Counter(
            "ats_tile_bytes_read", "Bytes read from storage for tile references", registry=registry
        )
        self.tiles_decoded = Counter(
            "ats_tiles_decoded", "Tiles decoded for tile references", registry=registry
        )
        self.tile_cache_hits = Counter("ats_tile_cache_hits", "Decoded-tile cache hits", registry=registry)
        self.tile_cache_misses = Counter(
            "ats_tile_cache_misses", "Decoded-tile cache misses", registry=registry
        )

    def watch(self, memory: MemoryBudget, uploads: Uploads) -> None:
        """Gauges read from the live budgets at each scrape."""
        gauges = {
            "ats_memory_budget_bytes": ("Server-wide memory budget for decoded pixels", lambda: memory.total),
            "ats_memory_reserved_bytes": ("Bytes of the memory budget reserved now", lambda: memory.in_use),
            "ats_uploads_receiving": ("Streamed uploads being received", lambda: uploads.receiving),
            "ats_upload_bytes_held": (
                "Bytes held by uploads and unary payloads in flight",
                lambda: uploads.bytes_held,
            ),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=self.registry).set_function(read)

    def observe_batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model).observe(size)

    def observe_prediction(self, model: str, prediction: Prediction) -> None:
        for stage, seconds in prediction.timings.items():
            self.stage_seconds.labels(model, stage).observe(seconds)
        height, width, _ = prediction.image_shape
        self.image_megapixels.labels(model).observe(height * width / 1e6)
        n_patches = len(prediction.offsets)
        self.patches.labels(model).inc(n_patches)
        self.patches_per_request.labels(model).observe(n_patches)


class _HttpsServer(ThreadingWSGIServer):
    """HTTPS whose handshakes run in each connection's own thread, with a timeout.

    prometheus-client's own TLS wraps the listening socket, so it handshakes
    in the accepting thread: one connection that never sends a ClientHello
    blocks every scrape. ``contexts`` gives the current SSL context (rotated
    certificates apply to new connections).
    """

    contexts: Callable[[], ssl.SSLContext]

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CONNECTION_TIMEOUT)
        with self.contexts().wrap_socket(request, server_side=True) as tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed handshake (a scanner, a scraper without a client certificate) is no server error."""
        log.debug("metrics connection from %s failed", client_address, exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class MetricsEndpoint:
    """``/metrics`` on its own port, over HTTP, or HTTPS when given ``tls`` (a
    function returning the current SSL context); stoppable for a clean exit."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        if tls is None:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
            return
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("HttpsServer", (_HttpsServer,), {"address_family": family})
        server: WSGIServer = make_server(host, port, make_wsgi_app(registry), server_class, _QuietHandler)
        assert isinstance(server, _HttpsServer)
        server.contexts = tls
        self._server = server
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
