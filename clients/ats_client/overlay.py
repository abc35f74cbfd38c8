"""Overlay picture: the attention map as a heat map over the image, with the
boxes of the patches the model looked at."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from ats_api.v1 import attention_sampling_pb2 as pb


def _cell_index(length: int, origin: float, step: float, cells: int) -> np.ndarray:
    """Attention cell covering each pixel along one axis (edges clamp to the border cells)."""
    return np.clip(np.floor((np.arange(length) + 0.5 - origin) / step), 0, cells - 1).astype(np.int64)


def attention_heat(response: pb.PredictResponse, height: int, width: int) -> np.ndarray:
    """(height, width) float in [0, 1]: each pixel's cell attention over the map's maximum."""
    att = response.attention
    values = np.asarray(att.values, dtype=np.float32).reshape(att.height, att.width)
    rows = _cell_index(height, att.offset_y, att.cell_height, att.height)
    cols = _cell_index(width, att.offset_x, att.cell_width, att.width)
    return values[rows][:, cols] / max(float(values.max()), 1e-12)


def render_overlay(pixels: np.ndarray, response: pb.PredictResponse, strength: float = 0.6) -> Image.Image:
    """RGB picture of ``pixels`` (H, W[, C]) uint8 with heat map and patch boxes."""
    rgb: np.ndarray = np.asarray(
        Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).convert(
            "RGB"
        ),
        dtype=np.float32,
    )
    height, width = rgb.shape[:2]
    if response.attention.values:
        alpha = strength * attention_heat(response, height, width)[..., np.newaxis]
        red = np.array([255.0, 32.0, 0.0], dtype=np.float32)
        rgb = rgb * (1 - alpha) + red * alpha
    picture = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    line = max(1, round(max(height, width) / 500))
    for patch in response.patches:
        draw.rectangle(
            [patch.x, patch.y, patch.x + patch.width - 1, patch.y + patch.height - 1],
            outline=(0, 255, 0),
            width=line,
        )
    draw.text(
        (4, 4),
        f"{response.label} ({max(p.probability for p in response.probabilities):.2f})",
        fill=(255, 255, 0),
    )
    return picture


def write_overlay(pixels: np.ndarray, response: pb.PredictResponse, path: str | os.PathLike) -> None:
    render_overlay(pixels, response).save(path, format="PNG")
