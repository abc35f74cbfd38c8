"""Assembles the server from a Config and runs its lifecycle: start, serve,
drain on SIGTERM.

gRPC runs on asyncio (``grpc.aio``) in a thread of its own: a call waiting
for its upload, for a slot or for memory is a suspended coroutine, so idle
or stalled clients hold no thread. Predictions run in a pool of
``--max-concurrent-predicts`` threads. ``start`` and ``drain`` stay plain
calls for whoever embeds the server.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Coroutine
from concurrent import futures
from typing import Any, TypeVar

import grpc
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, CollectorRegistry

from ats_api.oip.v2 import open_inference_pb2 as oip_pb
from ats_api.v1 import attention_sampling_pb2 as pb
from service import precision, tracing
from service.admission import Admission
from service.batching import Batcher, BatchSettings
from service.budget import MemoryBudget
from service.config import AuthGroup, Config, memory_ceiling
from service.dataplane import DataPlane
from service.metrics import Metrics, MetricsEndpoint
from service.models.repository import ModelRegistry, State
from service.models.warmup import warm_up
from service.pipeline import decode
from service.pipeline.sources import SourceLimits, SourceRegistry
from service.server import oip_http
from service.server.auth import AuthInterceptor, TokenFile
from service.server.files import CredentialFileError
from service.server.health import ReadinessHealth
from service.server.interceptor import MetricsInterceptor
from service.server.oip import OpenInferenceServicer
from service.server.registration import ParseErrorInterceptor, add_servicer
from service.server.servicer import AttentionSamplingServicer
from service.server.tfserving import TFS_SERVICES, ModelServicer, PredictionServicer
from service.server.tls import (
    TlsFiles,
    WatchedTls,
    grpc_configuration,
    grpc_credentials,
    ssl_context,
    ssl_contexts,
)
from service.tiles import add_tile_source
from service.uploads import UploadLimits, Uploads
from service.vitals import Vitals

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds between checks of the process's vitals for health (and heap trims).
VITALS_INTERVAL = 1.0

# The gRPC services that answer requests (each call is a span when tracing is on).
SERVING = (
    pb.DESCRIPTOR.services_by_name["AttentionSampling"],
    oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    *TFS_SERVICES.values(),
)


def grpc_options(config: Config) -> list[tuple[str, Any]]:
    """Transport settings: message sizes, and limits that keep one connection
    from taking the server (streams per connection, pings)."""
    return [
        ("grpc.so_reuseport", 0),  # a taken port is an error, not a silent second server
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        # Ping idle connections every minute, drop peers that do not answer in 20 s.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Clients may ping at most every 10 s; two pings too many close the connection.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (a name that does not resolve is not)."""
    try:
        found = socket.getaddrinfo(host.strip("[]"), None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found)


def exposure_warnings(config: Config) -> list[str]:
    """What a server with ``config`` leaves open to the network, for a loud warning at start."""
    warnings = []
    if not is_loopback(config.host):
        where = f"gRPC listens on {config.host}:{config.port}"
        if not config.tls_cert:
            warnings.append(
                f"{where} without TLS: images, predictions and tokens cross the network in clear "
                "(set --tls-cert and --tls-key)"
            )
        if AuthGroup.INFERENCE not in config.restricted_groups() and not config.tls_client_ca:
            warnings.append(
                f"{where} without tokens for inference (--auth-tokens-file) or client certificates "
                "(--tls-client-ca): whoever reaches it can run the models"
            )
        warnings.extend(oip_http.exposure_warnings(config))
    metrics_host = config.metrics_host or config.host
    if config.metrics_port and not config.metrics_tls_cert and not is_loopback(metrics_host):
        warnings.append(
            f"metrics served over plain HTTP on {metrics_host}:{config.metrics_port}: set "
            "--metrics-host 127.0.0.1, or --metrics-tls-cert and --metrics-tls-key"
        )
    return warnings


def _tensorflow_threads(config: Config) -> None:
    """TensorFlow's thread pools, sized before its first op (they cannot change afterwards)."""
    threading_config = tf.config.threading
    if config.intra_op_threads:
        threading_config.set_intra_op_parallelism_threads(config.intra_op_threads)
    if config.inter_op_threads:
        threading_config.set_inter_op_parallelism_threads(config.inter_op_threads)


class Server:
    """The gRPC front end over the data plane, with health, reflection and the metrics endpoint."""

    def __init__(self, config: Config, registry: CollectorRegistry = REGISTRY) -> None:
        self.config = config
        try:  # unusable certificates, keys or tokens stop the start, before anything else
            grpc_files = TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca, "--tls")
            self._grpc_tls = WatchedTls(grpc_files, grpc_configuration) if config.tls_cert else None
            metrics_files = TlsFiles(
                config.metrics_tls_cert, config.metrics_tls_key, config.metrics_tls_client_ca, "--metrics-tls"
            )
            self._metrics_tls = WatchedTls(metrics_files, ssl_context) if config.metrics_tls_cert else None
            self._tokens = TokenFile(config.auth_tokens_file) if config.auth_tokens_file else None
        except CredentialFileError as error:
            log.error("cannot start: %s", error)
            raise
        _tensorflow_threads(config)
        try:
            precision.apply(config.precision)
        except precision.PrecisionError as error:
            log.error("cannot start: %s", error)
            raise
        self.metrics = Metrics(registry)
        if config.tracing:
            tracing.configure(True)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self._loop_thread.start()
        self.memory = MemoryBudget(config.memory_budget_bytes)
        self.models = ModelRegistry(
            config.resolved_repository(),
            config.resolved_default_model(),
            functools.partial(warm_up, max_image_pixels=config.max_image_pixels),
            listeners=[self._on_model_change],
        )
        self.health = ReadinessHealth(self.models, Vitals(self.memory), self._loop)
        decode.take_over_pillow_guards()
        self.sources = SourceRegistry(SourceLimits(config.max_image_pixels, config.max_image_bytes))
        add_tile_source(
            self.sources,
            config.data_root,
            config.tile_cache_bytes,
            counters=self.metrics,
            view_oversample=config.view_oversample,
        )
        self._predict_threads = futures.ThreadPoolExecutor(
            max_workers=config.max_concurrent_predicts, thread_name_prefix="predict"
        )
        self._batcher = (
            Batcher(
                BatchSettings(config.batch_max_size, config.batch_timeout_us / 1e6, config.batch_threads),
                self.metrics.observe_batch,
            )
            if config.batch_max_size
            else None
        )
        self.plane = self._on_loop(self._make_plane())
        self.metrics.watch(self.memory, self.plane.uploads)
        self._grpc: grpc.aio.Server = self._on_loop(self._make_grpc())
        self._health_grpc = self._on_loop(self._make_health_grpc()) if config.health_port else None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._http: tuple[Any, int] | None = None  # the OIP REST runner and its port
        self._stopping = threading.Event()

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _make_plane(self) -> DataPlane:
        config = self.config
        uploads = Uploads(
            UploadLimits(
                header_timeout=config.upload_header_timeout,
                idle_timeout=config.upload_idle_timeout,
                total_timeout=config.upload_total_timeout,
                max_uploads=config.max_uploads,
                max_bytes=config.upload_budget_bytes,
                max_image_bytes=config.max_image_bytes,
                max_image_pixels=config.max_image_pixels,
            ),
            config.queue_timeout,
        )
        admission = Admission(config.max_concurrent_predicts, config.queue_timeout)
        return DataPlane(
            self.models,
            self.sources,
            self.metrics,
            admission,
            uploads,
            self.memory,
            self._predict_threads,
            self._batcher,
        )

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Metrics outermost, so calls refused for their token are counted too, then
        the caller's trace context (and the call's span, traced too); the token
        check before anything reads the request."""
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(self.metrics)]
        interceptors.extend(tracing.server_interceptors(SERVING))
        if self._tokens is not None:
            interceptors.append(AuthInterceptor(self._tokens, self.config.restricted_groups()))
        interceptors.append(ParseErrorInterceptor())
        return interceptors

    async def _make_grpc(self) -> grpc.aio.Server:
        """The aio server, made on the loop it will run on."""
        config = self.config
        server = grpc.aio.server(
            interceptors=self._interceptors(),
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            options=grpc_options(config),
        )
        add_servicer(
            server,
            AttentionSamplingServicer(self.plane, config.max_message_bytes),
            pb.DESCRIPTOR.services_by_name["AttentionSampling"],
        )
        add_servicer(
            server,
            OpenInferenceServicer(self.plane, self.health.servicer),
            oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        )
        add_servicer(server, PredictionServicer(self.plane), TFS_SERVICES["PredictionService"])
        add_servicer(server, ModelServicer(self.plane), TFS_SERVICES["ModelService"])
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        reflection.enable_server_reflection(
            (
                *(service.full_name for service in SERVING),
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{config.host}:{config.port}"
        if self._grpc_tls is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, grpc_credentials(self._grpc_tls))
        if self.port == 0:
            raise RuntimeError(f"cannot bind gRPC to {address}")
        return server

    async def _make_health_grpc(self) -> grpc.aio.Server:
        """The plaintext health-only server of --health-port, for probes that cannot speak TLS.

        The same interceptors as the main port; health is an open group
        whenever this port is on (load_config refuses otherwise)."""
        config = self.config
        server = grpc.aio.server(interceptors=self._interceptors(), options=grpc_options(config))
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        self.health_port = server.add_insecure_port(f"{config.host}:{config.health_port}")
        if self.health_port == 0:
            raise RuntimeError(f"cannot bind the health port to {config.host}:{config.health_port}")
        return server

    def _watch_vitals(self) -> None:
        while not self._stopping.wait(VITALS_INTERVAL):
            self.memory.periodic_trim()
            self.health.refresh()

    def _on_model_change(self, name: str, version: int, state: State) -> None:
        labels = (name, str(version))
        if state is State.UNLOADING:
            self.metrics.model_ready.remove(*labels)
            self.metrics.model_load_seconds.remove(*labels)
        else:
            self.metrics.model_ready.labels(*labels).set(1 if state is State.READY else 0)
        if state is State.READY:
            entry = next(e for e in self.models.snapshot()[name] if e.version == version)
            self.metrics.model_load_seconds.labels(*labels).set(entry.load_seconds)
        self.health.refresh()

    def start(self) -> None:
        """Serve at once (health NOT_SERVING until a model is ready), then load models."""
        config = self.config
        metrics_host = config.metrics_host or config.host
        if config.metrics_port:
            self._metrics_endpoint = MetricsEndpoint(
                self.metrics.registry,
                metrics_host,
                config.metrics_port,
                ssl_contexts(self._metrics_tls) if self._metrics_tls is not None else None,
            )
        self._on_loop(self._grpc.start())
        if config.http_port:
            self._http = self._on_loop(oip_http.serve(config, self.plane, self.health.servicer, self._tokens))
        if self._health_grpc is not None:
            self._on_loop(self._health_grpc.start())
            log.info("plaintext health-only gRPC on %s:%d", config.host, self.health_port)
        threading.Thread(target=self._watch_vitals, name="vitals", daemon=True).start()
        for warning in exposure_warnings(config):
            log.warning("INSECURE: %s", warning)
        log.info(
            "memory ceiling %.1f GiB (idle footprint + memory budget + upload budget + tile cache + "
            "messages being received): the container's memory limit should be at least this",
            memory_ceiling(self.config) / (1 << 30),
        )
        restricted = sorted(group.value for group in config.restricted_groups())
        log.info(
            "gRPC listening on %s:%d (%s; tokens needed for: %s), metrics on %s:%s (%s); repository %s",
            config.host,
            self.port,
            ("mutual TLS" if config.tls_client_ca else "TLS") if config.tls_cert else "plaintext",
            ", ".join(restricted) if restricted else "nothing",
            metrics_host,
            config.metrics_port or "off",
            "HTTPS" if config.metrics_tls_cert else "HTTP",
            self.models.root,
        )
        self.models.start(config.poll_interval)
        address = f"{'localhost' if config.host in ('0.0.0.0', '[::]') else config.host}:{self.port}"
        options = " --tls-ca CA.pem" if config.tls_cert else ""
        options += " --tls-cert CLIENT.pem --tls-key CLIENT-KEY.pem" if config.tls_client_ca else ""
        token = " --token TOKEN"
        log.info(
            "call it with: ats-client health --server %s%s; ats-client predict IMAGE --server %s%s "
            "[--overlay out.png]",
            address,
            options + (token if AuthGroup.HEALTH in config.restricted_groups() else ""),
            address,
            options + (token if AuthGroup.INFERENCE in config.restricted_groups() else ""),
        )

    def drain(self) -> None:
        """Health NOT_SERVING, keep answering for the drain delay (load balancers
        notice), stop accepting calls and let in-flight ones finish within the grace period."""
        log.info("draining: health NOT_SERVING, stopping in %.1f s", self.config.drain_delay)
        self.health.drain()
        time.sleep(self.config.drain_delay)
        self._on_loop(self._grpc.stop(self.config.grace_period))
        if self._http is not None:
            self._on_loop(self._http[0].cleanup())
        if self._health_grpc is not None:
            self._on_loop(self._health_grpc.stop(0))
        self._stopping.set()
        self._predict_threads.shutdown(wait=True)
        if self._batcher is not None:
            self._batcher.close()
        if self.config.tracing:
            tracing.shutdown()  # exports the spans still buffered
        self.models.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=5)
        log.info("stopped")
