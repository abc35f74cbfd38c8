"""grpc.health.v1 statuses that follow model readiness.

One entry per model (its name) is SERVING while a version of it is ready;
the overall entry ("") and the service's own entry are SERVING only while some
model is ready and the server is not draining, so load balancers and
Kubernetes probes send traffic only where it can be answered.
"""

from __future__ import annotations

import threading

from grpc_health.v1 import health, health_pb2

from service.models.repository import ModelRegistry, State

SERVICE_NAME = "ats.v1.AttentionSampling"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth:
    def __init__(self, registry: ModelRegistry) -> None:
        self.servicer = health.HealthServicer(experimental_non_blocking=True)
        self._registry = registry
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Recompute every entry from the registry (called on each model state change)."""
        with self._lock:
            snapshot = self._registry.snapshot()
            for name in self._known - set(snapshot):
                self.servicer.set(name, _NOT_SERVING)
            for name, versions in snapshot.items():
                ready = any(e.state is State.READY for e in versions)
                self.servicer.set(name, _SERVING if ready else _NOT_SERVING)
            self._known |= set(snapshot)
            overall = (
                _SERVING
                if any(e.state is State.READY for versions in snapshot.values() for e in versions)
                else _NOT_SERVING
            )
            self.servicer.set("", overall)
            self.servicer.set(SERVICE_NAME, overall)

    def drain(self) -> None:
        """Every entry NOT_SERVING from now on, whatever models do."""
        with self._lock:
            self.servicer.enter_graceful_shutdown()
