"""Runs the stages in order, timing each and stopping as soon as the caller
is gone (checked between stages: a stage itself is not interruptible)."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable

import tensorflow as tf

from service import tracing
from service.batching import Batcher
from service.models.servable import ServableModel
from service.pipeline import aggregate, attention, extract, features, head, lowres, sampling, two_level
from service.pipeline.fused import STAGES as FUSED_STAGES
from service.pipeline.fused import fused_graph
from service.pipeline.payload import Payload
from service.pipeline.prediction import Prediction, PredictOptions, Stages
from service.pipeline.sources import ImageSource, InMemorySource, SourceRegistry

STAGES = ("decode", "lowres", "attention", "sampling", "extract", "features", "aggregate", "head")
# Where a fused prediction checks its caller is still there: the graph runs as a whole.
FUSED_CHECKS = ("decode", "graph")


def run(
    model: ServableModel,
    payload: Payload,
    options: PredictOptions,
    sources: SourceRegistry,
    is_active: Callable[[], bool] = lambda: True,
    batcher: Batcher | None = None,
) -> Prediction:
    """Classify one image with ``model``: tensors stay in TensorFlow from the
    decoded pixels to the probabilities, and become NumPy once, at the end.

    A decoded image runs as one fused graph (with other requests' images
    through ``batcher``, if given); a source read region by region (a tile reference)
    runs stage by stage, since each stage reads what it needs."""
    spec = model.spec
    started = time.perf_counter()
    n_patches = sampling.check_n_patches(options.n_patches, spec)
    seed = options.seed if options.seed is not None else secrets.randbits(31)
    stages = Stages(is_active)
    with stages.stage("decode"):
        source = sources.open(payload, spec.channels)
    if spec.two_level is not None:
        prediction: Prediction = two_level.run(model, source, options, n_patches, seed, stages)
    elif isinstance(source, InMemorySource):
        prediction = _run_fused(model, source, options, n_patches, seed, stages, batcher)
    else:
        prediction = _run_staged(model, source, options, n_patches, seed, stages)
    stages.timings["total"] = time.perf_counter() - started
    return prediction


def _run_fused(
    model: ServableModel,
    source: InMemorySource,
    options: PredictOptions,
    n_patches: int,
    seed: int,
    stages: Stages,
    batcher: Batcher | None,
) -> Prediction:
    low_shape = lowres.low_shape(source, model.spec)
    stages.check("graph")
    crops = options.include_crops
    try:
        if batcher is not None:
            batched = batcher.run(
                model, source.pixels, low_shape, n_patches, seed, options.mode, crops, stages.is_active
            )
            result, row = batched.result, batched.row
            stages.timings["queue"] = batched.queued
        else:
            graph = fused_graph(model)
            result = graph.run([source.pixels], low_shape, n_patches, [seed], options.mode, crops)
            row = 0
    except tf.errors.InvalidArgumentError as err:
        raise sampling.refusal(err, n_patches) from None
    stages.timings.update(result.timings)
    for stage, (start, end) in zip(FUSED_STAGES, itertools.pairwise(result.marks), strict=True):
        tracing.record(f"ats.stage.{stage}", start, end, batch_size=len(result.probabilities))
    return Prediction(
        probabilities=result.probabilities[row],
        attention=result.attention[row],
        cells=result.cells[row],
        offsets=result.offsets[row],
        patch_probabilities=result.patch_probabilities[row],
        crops=result.patches[row] if crops and result.patches is not None else None,
        image_shape=source.shape,
        cell_step=result.cell_step,
        cell_origin=result.cell_origin,
        seed=seed,
        timings=stages.timings,
    )


def _run_staged(
    model: ServableModel,
    source: ImageSource,
    options: PredictOptions,
    n_patches: int,
    seed: int,
    stages: Stages,
) -> Prediction:
    spec = model.spec
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
