"""Assembles the server from a Config and runs its lifecycle: start, serve,
drain on SIGTERM."""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY, CollectorRegistry

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from service.admission import Admission
from service.config import Config
from service.dataplane import DataPlane
from service.metrics import Metrics, MetricsEndpoint
from service.models.repository import ModelRegistry, State
from service.models.warmup import warm_up
from service.pipeline import decode
from service.pipeline.sources import SourceLimits, SourceRegistry
from service.server.health import ReadinessHealth
from service.server.interceptor import MetricsInterceptor
from service.server.servicer import AttentionSamplingServicer
from service.tiles import add_tile_source

log = logging.getLogger(__name__)


class Server:
    """The gRPC front end over the data plane, with health, reflection and the metrics endpoint."""

    def __init__(self, config: Config, registry: CollectorRegistry = REGISTRY) -> None:
        self.config = config
        self.metrics = Metrics(registry)
        self.models = ModelRegistry(
            config.resolved_repository(), config.default_model, warm_up, listeners=[self._on_model_change]
        )
        self.health = ReadinessHealth(self.models)
        decode.disable_pillow_pixel_guard()
        self.sources = SourceRegistry(SourceLimits(config.max_image_pixels, config.max_image_bytes))
        add_tile_source(self.sources, config.data_root, config.tile_cache_bytes, counters=self.metrics)
        self.plane = DataPlane(
            self.models,
            self.sources,
            self.metrics,
            Admission(config.max_concurrent_predicts, config.queue_timeout),
        )
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
            interceptors=[MetricsInterceptor(self.metrics)],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            options=[
                ("grpc.so_reuseport", 0),  # a taken port is an error, not a silent second server
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
            ],
        )
        pb_grpc.add_AttentionSamplingServicer_to_server(
            AttentionSamplingServicer(self.plane, config.max_message_bytes), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._grpc)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["AttentionSampling"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._grpc,
        )
        self.port = self._grpc.add_insecure_port(f"{config.host}:{config.port}")
        if self.port == 0:
            raise RuntimeError(f"cannot bind gRPC to {config.host}:{config.port}")
        self._metrics_endpoint: MetricsEndpoint | None = None

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
        if self.config.metrics_port:
            self._metrics_endpoint = MetricsEndpoint(
                self.metrics.registry, self.config.host, self.config.metrics_port
            )
        self._grpc.start()
        log.info(
            "gRPC listening on %s:%d, metrics on %s:%s; repository %s",
            self.config.host,
            self.port,
            self.config.host,
            self.config.metrics_port or "off",
            self.models.root,
        )
        self.models.start(self.config.poll_interval)
        address = (
            f"{'localhost' if self.config.host in ('0.0.0.0', '[::]') else self.config.host}:{self.port}"
        )
        log.info(
            "call it with: ats-client health --server %s; ats-client predict IMAGE --server %s "
            "[--overlay out.png]",
            address,
            address,
        )

    def drain(self) -> None:
        """Health NOT_SERVING, keep answering for the drain delay (load balancers
        notice), stop accepting calls and let in-flight ones finish within the grace period."""
        log.info("draining: health NOT_SERVING, stopping in %.1f s", self.config.drain_delay)
        self.health.drain()
        time.sleep(self.config.drain_delay)
        self._grpc.stop(self.config.grace_period).wait()
        self.models.stop()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        log.info("stopped")
