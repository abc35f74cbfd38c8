"""The arithmetic the server runs models in: float32, their own, or bfloat16.

bfloat16 is TensorFlow's automatic mixed precision for oneDNN: a graph
rewrite that runs convolutions and matrix products in bfloat16 (float32
accumulation) where a CPU has bfloat16 instructions (AVX512_BF16 or AMX),
and leaves softmax, sums and the like in float32. On this project's 2-core
machine it halves the feature network's time; probabilities move by up to a
few hundredths and the sampled patches can differ (bench/results/service.md
measures both). Opt-in, like TensorRT's FP16 in Triton: float32 stays the
default, so a served answer is what ``predict_image`` gives.
"""

from __future__ import annotations

import os
import pathlib

PRECISIONS = ("float32", "bfloat16")
# /proc/cpuinfo flags of the instructions oneDNN runs bfloat16 with; without
# them it emulates bfloat16, slower than float32.
_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionError(ValueError):
    """A precision this process cannot run: the message says why."""


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU (``/proc/cpuinfo``'s text, read when not given) has bfloat16 instructions."""
    if cpuinfo is None:
        path = pathlib.Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[-1].split()
    }
    return any(flag in flags for flag in _BFLOAT16_FLAGS)


def apply(precision: str) -> None:
    """Set ``precision`` for every graph built from now on (call before loading models)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "float32":
        return
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") == "0":
        raise PrecisionError("--precision bfloat16 needs oneDNN, which TF_ENABLE_ONEDNN_OPTS=0 turns off")
    if not cpu_has_bfloat16():
        raise PrecisionError(
            "--precision bfloat16 needs a CPU with AVX512_BF16 or AMX instructions; this one has "
            "neither, and emulated bfloat16 runs slower than float32"
        )
    import tensorflow as tf  # here: the configuration imports PRECISIONS before TensorFlow loads

    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
