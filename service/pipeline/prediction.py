"""What a prediction takes and gives, and the timing of its stages: the
records every pipeline (one-level, fused, two-level) shares."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator

import numpy as np

from model_ops.sampling import Mode
from service import tracing
from service.errors import Cancelled


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    n_patches: int = 0  # 0: the model's default
    seed: int | None = None  # None: drawn per request (and reported)
    mode: Mode = "sample"
    include_crops: bool = False
    # two-level models only (service/pipeline/two_level.py)
    n_regions: int = 0  # 0: the model's default
    tissue_mask: str = "off"  # "off" or "otsu": zero coarse attention on background cells
    include_coarse_view: bool = False


@dataclasses.dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # (K,)
    attention: np.ndarray  # (Sh, Sw)
    cells: np.ndarray  # (N, 2) int
    offsets: np.ndarray  # (N, 2) top-left (y, x) in full-resolution pixels
    patch_probabilities: np.ndarray  # (N,)
    crops: np.ndarray | None  # (N, ph, pw, C) uint8 when asked for
    image_shape: tuple[int, int, int]
    cell_step: tuple[float, float]  # full-resolution size of one attention cell (y, x)
    cell_origin: tuple[float, float]  # full-resolution start of cell (0, 0)
    seed: int
    timings: dict[str, float]  # seconds per stage, "queue" when batched, and "total"


class Stages:
    """Times each stage and checks the caller is still there before it starts."""

    def __init__(self, is_active: Callable[[], bool]) -> None:
        self.is_active = is_active
        self.timings: dict[str, float] = {}

    def check(self, name: str) -> None:
        if not self.is_active():
            raise Cancelled(f"caller gone before stage {name}")

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.check(name)
        start = time.perf_counter()
        with tracing.span(f"ats.stage.{name}"):
            yield
        self.timings[name] = time.perf_counter() - start
