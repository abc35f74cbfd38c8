"""Overlay picture: the attention map as a heat map over the image, with the
boxes of the patches the model looked at (and, for a two-level model, of its
regions).

A slide is drawn on a thumbnail: the coarse view a two-level model's server
returns when asked (``coarse_view``), with every box scaled from
full-resolution pixels to it; no pixel of the slide itself is needed.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from ats_api.v1 import attention_sampling_pb2 as pb

PATCH_COLOUR = (0, 255, 0)
REGION_COLOUR = (0, 160, 255)
MIN_SLIDE_SIDE = 512  # a slide's thumbnail is drawn at least this large (pixels repeated)


def _cell_index(length: int, origin: float, step: float, cells: int) -> np.ndarray:
    """Attention cell covering each pixel along one axis (edges clamp to the border cells)."""
    return np.clip(np.floor((np.arange(length) + 0.5 - origin) / step), 0, cells - 1).astype(np.int64)


def attention_heat(
    response: pb.PredictResponse, height: int, width: int, scale: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """(height, width) float in [0, 1]: each pixel's cell attention over the map's maximum,
    for a picture of ``scale`` (y, x) picture pixels per full-resolution pixel."""
    att = response.attention
    values = np.asarray(att.values, dtype=np.float32).reshape(att.height, att.width)
    rows = _cell_index(height, att.offset_y * scale[0], att.cell_height * scale[0], att.height)
    cols = _cell_index(width, att.offset_x * scale[1], att.cell_width * scale[1], att.width)
    return values[rows][:, cols] / max(float(values.max()), 1e-12)


def _box(item: pb.Patch | pb.Region, scale: tuple[float, float]) -> list[float]:
    """Picture coordinates of a full-resolution box (inclusive corners)."""
    return [
        item.x * scale[1],
        item.y * scale[0],
        max(item.x * scale[1], (item.x + item.width) * scale[1] - 1),
        max(item.y * scale[0], (item.y + item.height) * scale[0] - 1),
    ]


def render_overlay(
    pixels: np.ndarray,
    response: pb.PredictResponse,
    strength: float = 0.6,
    scale: tuple[float, float] = (1.0, 1.0),
) -> Image.Image:
    """RGB picture of ``pixels`` (H, W[, C]) uint8 with heat map, region and patch boxes;
    ``scale`` (y, x) is picture pixels per full-resolution pixel (1 for the image itself)."""
    rgb: np.ndarray = np.asarray(
        Image.fromarray(pixels.squeeze(-1) if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).convert(
            "RGB"
        ),
        dtype=np.float32,
    )
    height, width = rgb.shape[:2]
    if response.attention.values:
        alpha = strength * attention_heat(response, height, width, scale)[..., np.newaxis]
        red = np.array([255.0, 32.0, 0.0], dtype=np.float32)
        rgb = rgb * (1 - alpha) + red * alpha
    picture = Image.fromarray(rgb.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    line = max(1, round(max(height, width) / 500))
    for region in response.two_level.regions:
        draw.rectangle(_box(region, scale), outline=REGION_COLOUR, width=line)
    for patch in response.patches:
        draw.rectangle(_box(patch, scale), outline=PATCH_COLOUR, width=line)
    draw.text(
        (4, 4),
        f"{response.label} ({max(p.probability for p in response.probabilities):.2f})",
        fill=(255, 255, 0),
    )
    return picture


def write_overlay(pixels: np.ndarray, response: pb.PredictResponse, path: str | os.PathLike) -> None:
    render_overlay(pixels, response).save(path, format="PNG")


def render_slide_overlay(response: pb.PredictResponse, strength: float = 0.6) -> Image.Image:
    """The overlay of an image the client does not hold, drawn on the coarse view
    the response carries (ask for it with ``coarse_view=True``)."""
    view = response.two_level.coarse_view
    if not view.shape:
        raise ValueError(
            "the response carries no coarse view to draw on: only two-level models return one, "
            "when the request asks for it"
        )
    pixels = np.frombuffer(view.data, np.uint8).reshape(tuple(view.shape))
    zoom = max(1, -(-MIN_SLIDE_SIDE // max(pixels.shape[:2])))  # a small view is enlarged for the boxes
    pixels = pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)
    scale = (pixels.shape[0] / response.image_height, pixels.shape[1] / response.image_width)
    return render_overlay(pixels, response, strength, scale)


def write_slide_overlay(response: pb.PredictResponse, path: str | os.PathLike) -> None:
    render_slide_overlay(response).save(path, format="PNG")
