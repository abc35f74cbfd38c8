"""Noise patterns: random 28x28 line strokes that distract the attention.

A stroke is a short polyline of one to three segments, drawn with varying
width and brightness, so that at the 0.12 low-resolution scale it is a blob
of roughly a digit's size and ink.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from model_ops.datasets.digits import DIGIT_SIZE


def stroke_pattern(rng: np.random.Generator, size: int = DIGIT_SIZE) -> np.ndarray:
    """Draw one ``(size, size)`` uint8 stroke pattern from ``rng``."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    n_points = int(rng.integers(2, 5))
    margin = size * 0.12
    points = rng.uniform(margin, size - margin, size=(n_points, 2))
    width = int(rng.integers(2, 5))
    brightness = int(rng.integers(140, 256))
    draw.line([tuple(p) for p in points], fill=brightness, width=width, joint="curve")
    return np.asarray(canvas, dtype=np.uint8)
