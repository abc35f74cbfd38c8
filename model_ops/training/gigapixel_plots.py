"""Pictures of two-level attention on gigapixel canvases: coarse map and regions, a region and its patches.

A 100k canvas is shown through what the model read of it: the coarse view
(1563 px a side, where a digit is a faint mark: shown brightened and
max-pooled so marks survive the shrinking), the coarse attention with the
region boxes, for the most attended region its fine view and fine
attention with the patch boxes, and the full-resolution patches the most
attended regions gave.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from model_ops.datasets.gigapixel_digits import LayoutImage, gigapixel_spec
from model_ops.datasets.megapixel_digits import make_layout
from model_ops.export import ModelMetadata
from model_ops.training.plots import heat, save_rows
from model_ops.two_level_pipeline import TwoLevelNetworks, TwoLevelResult, read_region_views, run_two_level

PANEL = 360
COARSE_BRIGHTEN = 16
SIDES = (10_000, 100_000)
STRIP = 5


def _max_pool(image: np.ndarray, side: int) -> np.ndarray:
    """Shrink ``image`` ``(h, w)`` to at most ``side`` a side by block maxima (marks stay visible)."""
    factor = max(1, math.ceil(max(image.shape) / side))
    h, w = (math.ceil(s / factor) * factor for s in image.shape)
    padded = np.zeros((h, w), image.dtype)
    padded[: image.shape[0], : image.shape[1]] = image
    return padded.reshape(h // factor, factor, w // factor, factor).max(axis=(1, 3))


def _panel(pixels: np.ndarray, rgb: bool = False) -> Image.Image:
    image = Image.fromarray(pixels).convert("RGB") if not rgb else Image.fromarray(pixels)
    return image.resize((PANEL, round(PANEL * pixels.shape[0] / pixels.shape[1])), Image.NEAREST)


def _boxes(panel: Image.Image, boxes: np.ndarray, size: tuple[int, int], scale: float, colour) -> None:
    draw = ImageDraw.Draw(panel)
    for y, x in boxes:
        draw.rectangle(
            [x * scale, y * scale, (x + size[1]) * scale, (y + size[0]) * scale], outline=colour, width=2
        )


def _patch_strip(
    image: LayoutImage, result: TwoLevelResult, metadata: ModelMetadata, height: int
) -> Image.Image:
    """The first patch of each of the ``STRIP`` most attended regions, at full resolution, top to bottom."""
    order = np.argsort(-result.region_probs[0].numpy())[:STRIP]
    patches = image.read_patches(result.patch_offsets[0].numpy()[order, 0], metadata.patch_size)[..., 0]
    side = height // STRIP
    strip = Image.new("RGB", (side, height), "white")
    for i, patch in enumerate(patches):
        strip.paste(
            Image.fromarray(patch).convert("RGB").resize((side - 4, side - 4), Image.NEAREST),
            (2, i * side + 2),
        )
    return strip


def two_level_row(
    image: LayoutImage, result: TwoLevelResult, metadata: ModelMetadata, title: str
) -> Image.Image:
    """Coarse view and map with the region boxes; the top region's view and map with its patch boxes;
    the patches of the top regions."""
    spec = metadata.two_level
    height, width, _ = image.shape
    coarse = image.low_view(metadata.low_shape(height, width))[..., 0]
    bright = np.clip(coarse.astype(np.int32) * COARSE_BRIGHTEN, 0, 255).astype(np.uint8)
    coarse_map = result.coarse_attention[0].numpy()
    panels = [_panel(_max_pool(bright, PANEL)), _panel(heat(_max_pool(coarse_map, PANEL)), rgb=True)]
    regions = result.region_offsets[0].numpy()
    for panel in panels:
        _boxes(panel, regions, spec.region_size, PANEL / width, (0, 200, 255))
    top = int(np.argmax(result.region_probs[0].numpy()))
    view = read_region_views(image, regions[top : top + 1], spec.region_size, spec.fine_view_shape())[
        0, ..., 0
    ]
    fine = [_panel(view), _panel(heat(result.fine_attention[0, top].numpy()), rgb=True)]
    inside = result.patch_offsets[0, top].numpy() - regions[top]
    for panel in fine:
        _boxes(panel, inside, metadata.patch_size, PANEL / spec.region_size[1], (0, 255, 0))
    panels += [*fine, _patch_strip(image, result, metadata, panels[0].height)]
    row = Image.new("RGB", (sum(p.width + 10 for p in panels), panels[0].height + 22), "white")
    left = 0
    for panel in panels:
        row.paste(panel, (left, 22))
        left += panel.width + 10
    ImageDraw.Draw(row).text((4, 4), title, fill="black")
    return row


def draw_two_level(nets, metadata: ModelMetadata, seed: int, png_path: str | os.PathLike) -> None:
    """One row per canvas side in ``SIDES`` (held-out canvas 0 of ``seed``), top-k regions and patches."""
    coarse, fine = nets.map_nets()
    stages = TwoLevelNetworks(coarse, fine, nets.features, nets.head, metadata.pixel_scale)
    rows = []
    for side in SIDES:
        layout = make_layout(gigapixel_spec(side), "test", seed, 0)
        image = LayoutImage(layout)
        result = run_two_level(stages, image, metadata, mode="top_k")
        probabilities = result.probabilities[0].numpy()
        title = (
            f"{layout.height}x{layout.width}: label {layout.label}, predicted {probabilities.argmax()} "
            f"(p={probabilities.max():.2f}); coarse view x{COARSE_BRIGHTEN} and coarse map with "
            f"{len(result.region_offsets[0])} regions; top region's view and fine map with its patches; "
            f"first patch of the {STRIP} top regions"
        )
        rows.append(two_level_row(image, result, metadata, title))
    save_rows(rows, png_path)
