"""PNG pictures of a training run, drawn with Pillow alone (no plotting library is a dependency).

- ``plot_curves``: one panel per metric family (loss, accuracy, ...) from the
  CSV log, train and validation curves per panel.
- ``plot_attention``: canvases side by side with their attention map, and
  the sampled patches drawn as boxes on both.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
from PIL import Image, ImageDraw

_PANEL = (520, 340)
_MARGIN = (60, 30, 20, 40)  # left, top, right, bottom
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def read_log(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a CSV log as float lists (the ``epoch`` column included)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        key: [float(row[key]) for row in rows if row.get(key) not in (None, "")]
        for key in (rows[0] if rows else {})
    }


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    step = (hi - lo) / count if hi > lo else 1.0
    magnitude = 10 ** math.floor(math.log10(step))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= step), default=step)
    return [t * step for t in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _panel(title: str, series: dict[str, list[float]], xs: list[float]) -> Image.Image:
    image = Image.new("RGB", _PANEL, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = _MARGIN
    x0, y0, x1, y1 = left, top, _PANEL[0] - right, _PANEL[1] - bottom
    values = [v for ys in series.values() for v in ys if math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    xlo, xhi = (min(xs), max(xs)) if len(xs) > 1 else (0.0, 1.0)

    def point(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xlo) / (xhi - xlo) * (x1 - x0), y1 - (y - lo) / (hi - lo) * (y1 - y0))

    draw.rectangle([x0, y0, x1, y1], outline="black")
    for tick in _ticks(lo, hi):
        _, ty = point(xlo, tick)
        draw.line([x0 - 4, ty, x0, ty], fill="black")
        draw.text((4, ty - 6), f"{tick:.3g}", fill="black")
    for tick in _ticks(xlo, xhi):
        tx, _ = point(tick, lo)
        draw.line([tx, y1, tx, y1 + 4], fill="black")
        draw.text((tx - 6, y1 + 8), f"{tick:g}", fill="black")
    draw.text((x0, 8), title, fill="black")
    draw.text(((x0 + x1) / 2 - 15, _PANEL[1] - 16), "epoch", fill="black")
    for i, (name, ys) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        # read_log drops blank cells, so a column may be shorter than the epochs
        points = [point(x, y) for x, y in zip(xs, ys, strict=False) if math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.text((x1 - 150, y0 + 6 + 14 * i), name, fill=colour)
    return image


def plot_curves(log_path: str | os.PathLike, png_path: str | os.PathLike, title: str) -> None:
    """Draw every metric of a Keras CSV log, ``name`` and ``val_name`` on one panel."""
    log = read_log(log_path)
    xs = [e + 1 for e in log.get("epoch", [])]
    names = [k for k in log if k != "epoch" and not k.startswith("val_") and k != "learning_rate"]
    panels = [
        _panel(f"{title}: {name}", {n: log[n] for n in (name, f"val_{name}") if n in log}, xs)
        for name in names
    ]
    if not panels:
        raise ValueError(f"{log_path} has no metric columns")
    sheet = Image.new("RGB", (_PANEL[0] * len(panels), _PANEL[1]), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, (i * _PANEL[0], 0))
    sheet.save(png_path)


def heat(attention: np.ndarray) -> np.ndarray:
    """Attention map -> RGB uint8 (black -> red -> yellow); square root of the map over its maximum,
    so that cells with a fraction of the peak mass stay visible."""
    a = np.sqrt(attention / max(float(attention.max()), 1e-12))
    return (np.stack([np.clip(2 * a, 0, 1), np.clip(2 * a - 1, 0, 1), np.zeros_like(a)], -1) * 255).astype(
        np.uint8
    )


def plot_attention(
    canvases: list[np.ndarray],
    attentions: list[np.ndarray],
    offsets: list[np.ndarray],
    patch_size: tuple[int, int],
    titles: list[str],
    png_path: str | os.PathLike,
    side: int = 450,
) -> None:
    """One row per canvas: the canvas and its attention map, sampled patches boxed in green on both."""
    rows = []
    for canvas, attention, offs, title in zip(canvases, attentions, offsets, titles, strict=True):
        height, width = canvas.shape[:2]
        scale = side / max(height, width)
        size = (round(width * scale), round(height * scale))
        picture = Image.fromarray(canvas[..., 0]).resize(size, Image.BOX).convert("RGB")
        heatmap = Image.fromarray(heat(attention)).resize(size, Image.NEAREST)
        for panel in (picture, heatmap):
            draw = ImageDraw.Draw(panel)
            for y, x in offs:
                draw.rectangle(
                    [x * scale, y * scale, (x + patch_size[1]) * scale, (y + patch_size[0]) * scale],
                    outline=(0, 255, 0),
                    width=2,
                )
        row = Image.new("RGB", (2 * size[0] + 10, size[1] + 20), "white")
        row.paste(picture, (0, 20))
        row.paste(heatmap, (size[0] + 10, 20))
        ImageDraw.Draw(row).text((4, 4), title, fill="black")
        rows.append(row)
    save_rows(rows, png_path)


def save_rows(rows: list[Image.Image], png_path: str | os.PathLike) -> None:
    """``rows`` stacked top to bottom on white, as one PNG."""
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    sheet.save(png_path)
