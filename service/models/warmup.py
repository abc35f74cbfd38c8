"""Warm-up: one full prediction on a synthetic image before a version is
marked ready, so the first real request does not pay for tracing and
allocation (and a version that cannot predict never serves)."""

from __future__ import annotations

import math

import numpy as np

from model_ops.sampling import MODES
from service.models.servable import ServableModel
from service.pipeline import runner
from service.pipeline.payload import RawTensor
from service.pipeline.sources import SourceLimits, SourceRegistry


def warmup_shape(servable: ServableModel) -> tuple[int, int, int]:
    """An image size the model accepts: its fixed low view scaled up, or large
    enough for a low view a little wider than the receptive field and for
    several patches."""
    spec = servable.spec
    if spec.low_size is not None:
        height, width = (math.ceil(s / spec.low_scale) for s in spec.low_size)
    else:
        side = max(4 * max(spec.patch_size), math.ceil((spec.receptive_field + 16) / spec.low_scale))
        height = width = side
    return height, width, spec.channels


def warm_up(servable: ServableModel) -> None:
    """Predict in both modes at two image sizes: the second size lets traced
    functions generalise to any size before the first real request."""
    height, width, channels = warmup_shape(servable)
    rng = np.random.default_rng(0)
    for shape in ((height, width, channels), (height * 3 // 2, width * 5 // 4, channels)):
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        payload = RawTensor(shape=shape, dtype="uint8", data=pixels.tobytes())
        sources = SourceRegistry(
            SourceLimits(max_image_pixels=shape[0] * shape[1], max_image_bytes=pixels.nbytes)
        )
        for mode in MODES:
            runner.run(servable, payload, runner.PredictOptions(seed=0, mode=mode), sources)
