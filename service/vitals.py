"""Whether the process can still serve, beyond having a model: descriptors
left, and memory budget not refused for long. Health reports NOT_SERVING
while any problem lasts, so a balancer or Kubernetes stops sending traffic
to a server that would only fail it, and SERVING again once it recovers."""

from __future__ import annotations

import os
import resource

from service.budget import MemoryBudget

# Share of the descriptor limit in use beyond which new calls may fail to
# open files or accept connections.
FD_HIGH_WATER = 0.9
# Seconds of unbroken memory-budget refusals that count as exhaustion rather
# than a burst the queue absorbs.
MEMORY_EXHAUSTED_AFTER = 10.0


def open_descriptors() -> int:
    """Descriptors this process holds now."""
    return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself opened


class Vitals:
    def __init__(self, memory: MemoryBudget) -> None:
        self._memory = memory

    def problems(self) -> list[str]:
        """Why the server cannot serve now; empty when it can."""
        found = []
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        used = open_descriptors()
        if soft != resource.RLIM_INFINITY and used >= FD_HIGH_WATER * soft:
            found.append(f"{used} of {soft} file descriptors in use")
        refused = self._memory.exhausted_for()
        if refused is not None and refused >= MEMORY_EXHAUSTED_AFTER:
            found.append(f"memory budget refusing requests for {refused:.0f} s")
        return found
