"""The machine line every benchmark table starts with: results are only
comparable on the same processor, core count and library versions."""

from __future__ import annotations

import os
import pathlib
import platform


def cpu_name() -> str:
    """The processor's model name, or what the platform module knows."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def describe(**versions: str) -> str:
    """'CPU, N cores usable, OS; Python x, <name> <version>...' for a table header."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    libraries = "".join(f", {name} {version}" for name, version in versions.items())
    return (
        f"{cpu_name()}, {cores} cores usable, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}{libraries}"
    )
