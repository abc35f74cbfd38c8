"""Warm-up: one full prediction on a synthetic image before a version is
marked ready, so the first real request does not pay for tracing and
allocation (and a version that cannot predict never serves). A two-level
model's prediction runs through the same entry point, on an image of a few
regions. A one-level model predicts twice over: as an upload (the fused
graph) and as a source read region by region, as a tile reference is (the
stages one by one), so neither path traces on a client's first request.

The attention network also runs once on the largest low view the server
admits: TensorFlow's oneDNN allocator keeps its high-water mark pooled for
good, so paying it at load makes the footprint the same before and after
the first large image (memory limits are sized from the idle footprint)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from model_ops.sampling import MODES
from service.models.servable import ServableModel
from service.pipeline import runner
from service.pipeline.payload import Payload, RawTensor, TileRef
from service.pipeline.sources import ImageSource, InMemorySource, SourceLimits, SourceRegistry


class _ByRegion(ImageSource):
    """Pixels in memory, served as a tile reference's source is: the runner
    then takes the staged path, as it does for a file read region by region."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._image = InMemorySource(pixels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._image.shape

    def low_view(self, size: tuple[int, int]) -> tf.Tensor:
        return self._image.low_view(size)

    def patches(self, offsets: tf.Tensor, patch_size: tuple[int, int]) -> tf.Tensor:
        return self._image.patches(offsets, patch_size)


def _payloads(pixels: np.ndarray, limits: SourceLimits) -> tuple[SourceRegistry, list[Payload]]:
    """The pixels as a raw tensor and as a (warm-up only) tile reference."""
    sources = SourceRegistry(limits)
    sources.register("tile", lambda payload, channels, limits: _ByRegion(pixels))
    raw = RawTensor(shape=pixels.shape, dtype="uint8", data=pixels.tobytes())
    return sources, [raw, TileRef("warm-up")]


def warmup_shape(servable: ServableModel) -> tuple[int, int, int]:
    """An image size the model accepts: its fixed low view scaled up, or large
    enough for a low view a little wider than the receptive field and for
    several patches."""
    spec = servable.spec
    if spec.low_size is not None:
        height, width = (math.ceil(s / spec.low_scale) for s in spec.low_size)
    else:
        side = max(4 * max(spec.patch_size), math.ceil((spec.receptive_field + 16) / spec.low_scale))
        if spec.two_level is not None:  # room for two regions across
            side = max(side, 2 * max(spec.two_level.region_size))
        height = width = side
    return height, width, spec.channels


def largest_view(servable: ServableModel, max_image_pixels: int) -> tuple[int, int]:
    """The low view of a square image of ``max_image_pixels`` (views of other
    shapes with as many pixels have the same area)."""
    side = math.isqrt(max_image_pixels)
    return servable.spec.low_shape(side, side)


def _options(servable: ServableModel, other_counts: bool) -> runner.PredictOptions:
    """Seed 0; with ``other_counts``, a two-level model draws numbers of regions and
    patches other than its defaults (fewer where possible), so that its traced
    sampling and aggregation generalise over them as well."""
    spec = servable.spec
    if spec.two_level is None or not other_counts:
        return runner.PredictOptions(seed=0)

    def other(n: int, maximum: int) -> int:
        return n - 1 if n > 1 else min(n + 1, maximum)

    return runner.PredictOptions(
        seed=0,
        n_regions=other(spec.two_level.n_regions, spec.two_level.max_regions),
        n_patches=other(spec.n_patches, spec.max_patches),
    )


def warm_up(servable: ServableModel, max_image_pixels: int = 0) -> None:
    """Predict in both modes at two image sizes: the second size lets traced
    functions generalise to any size before the first real request. With
    ``max_image_pixels``, run the attention network on the largest view too."""
    height, width, channels = warmup_shape(servable)
    rng = np.random.default_rng(0)
    for size, shape in enumerate(((height, width, channels), (height * 3 // 2, width * 5 // 4, channels))):
        options = _options(servable, other_counts=bool(size))
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        limits = SourceLimits(max_image_pixels=shape[0] * shape[1], max_image_bytes=pixels.nbytes)
        sources, payloads = _payloads(pixels, limits)
        if servable.spec.two_level is not None:
            payloads = payloads[:1]  # one path: a two-level model always runs stage by stage
        for payload in payloads:
            for mode in MODES:
                runner.run(servable, payload, dataclasses.replace(options, mode=mode), sources)
    if max_image_pixels and servable.spec.low_size is None:
        height, width = largest_view(servable, max_image_pixels)
        attention = servable.attention if servable.spec.two_level is None else servable.coarse_attention
        attention(tf.zeros((1, height, width, channels), tf.uint8))
