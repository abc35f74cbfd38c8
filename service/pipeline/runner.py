"""Runs the stages in order, timing each and stopping as soon as the caller
is gone (checked between stages: a stage itself is not interruptible)."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable, Iterator

import numpy as np

from model_ops.sampling import Mode
from service import tracing
from service.errors import Cancelled
from service.models.servable import ServableModel
from service.pipeline import aggregate, attention, extract, features, head, lowres, sampling
from service.pipeline.payload import Payload
from service.pipeline.sources import SourceRegistry

STAGES = ("decode", "lowres", "attention", "sampling", "extract", "features", "aggregate", "head")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    n_patches: int = 0  # 0: the model's default
    seed: int | None = None  # None: drawn per request (and reported)
    mode: Mode = "sample"
    include_crops: bool = False


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
    timings: dict[str, float]  # seconds per stage, and "total"


class _Stages:
    """Times each stage and checks the caller is still there before it starts."""

    def __init__(self, is_active: Callable[[], bool]) -> None:
        self.is_active = is_active
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.is_active():
            raise Cancelled(f"caller gone before stage {name}")
        start = time.perf_counter()
        with tracing.span(f"ats.stage.{name}"):
            yield
        self.timings[name] = time.perf_counter() - start


def run(
    model: ServableModel,
    payload: Payload,
    options: PredictOptions,
    sources: SourceRegistry,
    is_active: Callable[[], bool] = lambda: True,
) -> Prediction:
    """Classify one image with ``model``: tensors stay in TensorFlow from the
    decoded pixels to the probabilities, and become NumPy once, at the end."""
    spec = model.spec
    started = time.perf_counter()
    n_patches = sampling.check_n_patches(options.n_patches, spec)
    seed = options.seed if options.seed is not None else secrets.randbits(31)
    stages = _Stages(is_active)
    with stages.stage("decode"):
        source = sources.open(payload, spec.channels)
    high_shape = source.shape[:2]
    with stages.stage("lowres"):
        x_low = lowres.low_view(source, spec)
    with stages.stage("attention"):
        attention_map = attention.attention_map(model, x_low)
    with stages.stage("sampling"):
        positions = sampling.sample(
            attention_map, spec, n_patches, options.mode, seed, tuple(x_low.shape[1:3]), high_shape
        )
    with stages.stage("extract"):
        patches = extract.extract(source, positions.offsets, spec)
    with stages.stage("features"):
        patch_features = features.patch_features(model, patches)
    with stages.stage("aggregate"):
        estimate = aggregate.aggregate(patch_features, positions.probabilities, spec)
    with stages.stage("head"):
        probabilities = head.classify(model, estimate)
    stages.timings["total"] = time.perf_counter() - started
    return Prediction(
        probabilities=probabilities.numpy()[0],
        attention=attention_map.numpy()[0],
        cells=positions.cells.numpy()[0],
        offsets=positions.offsets.numpy()[0],
        patch_probabilities=positions.probabilities.numpy()[0],
        crops=patches.numpy()[0] if options.include_crops else None,
        image_shape=source.shape,
        cell_step=tuple(positions.cell_step.numpy().tolist()),
        cell_origin=tuple(positions.cell_origin.numpy().tolist()),
        seed=seed,
        timings=stages.timings,
    )
