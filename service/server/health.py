"""grpc.health.v1 statuses that follow model readiness and the process's vitals.

One entry per model (its name) is SERVING while a version of it is ready;
the overall entry ("") and the service's own entry are SERVING only while some
model is ready, the process is healthy (descriptors, memory budget: see
``service.vitals``) and the server is not draining, so load balancers and
Kubernetes probes send traffic only where it can be answered.

The health servicer lives on the server's event loop; model changes arrive
from the registry's threads, so every update is handed to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from grpc_health.v1 import health, health_pb2

from service.models.repository import ModelRegistry, State
from service.vitals import Vitals

log = logging.getLogger(__name__)

SERVICE_NAME = "ats.v1.AttentionSampling"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReadinessHealth:
    def __init__(self, registry: ModelRegistry, vitals: Vitals, loop: asyncio.AbstractEventLoop) -> None:
        self._registry = registry
        self._vitals = vitals
        self._loop = loop
        self.servicer, self._applying = asyncio.run_coroutine_threadsafe(self._make_servicer(), loop).result()
        self._known: set[str] = set()
        self._problems: list[str] = []
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self.refresh()

    @staticmethod
    async def _make_servicer() -> tuple[health.aio.HealthServicer, asyncio.Lock]:
        """Made on the loop: their conditions and locks belong to it."""
        return health.aio.HealthServicer(), asyncio.Lock()

    def _push(self, statuses: dict[str, int]) -> None:
        """Hand ``statuses`` to the loop without waiting for it: only the latest
        pending set is applied, so updates from several threads converge on
        the newest state whatever order the loop runs them in."""
        self._pending = statuses

        async def apply() -> None:
            async with self._applying:  # one set at a time: a newer one never lands first
                pending, self._pending = self._pending, {}
                for name, status in pending.items():
                    await self.servicer.set(name, status)

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(apply()))

    def refresh(self) -> None:
        """Recompute every entry from the registry and the vitals (called on
        each model state change and periodically by the server)."""
        with self._lock:
            snapshot = self._registry.snapshot()
            problems = self._vitals.problems()
            if problems != self._problems:
                if problems:
                    log.warning("health NOT_SERVING: %s", "; ".join(problems))
                elif self._problems:
                    log.warning("health recovered: %s cleared", "; ".join(self._problems))
                self._problems = problems
            statuses = dict.fromkeys(self._known - set(snapshot), _NOT_SERVING)
            for name, versions in snapshot.items():
                ready = any(e.state is State.READY for e in versions)
                statuses[name] = _SERVING if ready else _NOT_SERVING
            self._known |= set(snapshot)
            ready = any(e.state is State.READY for versions in snapshot.values() for e in versions)
            overall = _SERVING if ready and not problems else _NOT_SERVING
            statuses[""] = statuses[SERVICE_NAME] = overall
            self._push(statuses)

    def drain(self) -> None:
        """Every entry NOT_SERVING from now on, whatever models do."""
        with self._lock:
            asyncio.run_coroutine_threadsafe(self.servicer.enter_graceful_shutdown(), self._loop).result()
