"""Gigapixel digits: the Megapixel-digits protocol on canvases of 10k x 10k to 100k x 100k pixels.

The same objects as :mod:`model_ops.datasets.megapixel_digits` (3 digits of
the target class, 2 of other classes, 28x28 noise strokes, the label is the
majority digit) on a canvas up to 4,400 times larger, with noise strokes
growing with the side (``STROKES_PER_1000_PX`` per 1000 px: 50 at 10k, 500 at
100k), so that a canvas is more than 99.99% background. Three scales, fixed
in level-0 pixels whatever the canvas size:

- the *coarse* view of the whole canvas at ``1 / COARSE_FACTOR`` (1/64: 1563 px
  a side at 100k, 157 at 10k). A digit there is a mark of 1 to 4 pixels of
  grey level 3 to 15, a stroke a fainter one; at 1/128 rounding to uint8
  would leave a digit as much ink as a stroke, and nothing to tell them apart;
- a *region* of ``REGION_SIZE`` (2048) px seen at ``1 / FINE_FACTOR`` (1/8, a
  256x256 view: the scale the one-level model's attention reads digits at);
- full-resolution 50x50 *patches*.

Nothing renders level 0 of a whole canvas: :class:`LayoutImage` gives the
coarse view by block sums, region views by block sums aligned on the region,
and patches by rendering only their pixels, so the two-level pipeline reads
a 100k canvas as it would read a pyramidal file. A coarse view is exact (it
equals ``low_resolution_view`` of the full canvas) when the sides are
multiples of ``COARSE_FACTOR``: :func:`gigapixel_spec` rounds them up.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence

import numpy as np

from model_ops.data import MultiResolutionImage
from model_ops.datasets.megapixel_digits import CanvasSpec, Layout, render_region

COARSE_FACTOR = 64
REGION_SIZE = 2048
FINE_FACTOR = 8
STROKES_PER_1000_PX = 5


def gigapixel_spec(height: int, width: int | None = None) -> CanvasSpec:
    """The canvas of about ``height x width`` (square by default), sides rounded up to a multiple of 64."""
    height = COARSE_FACTOR * math.ceil(height / COARSE_FACTOR)
    width = height if width is None else COARSE_FACTOR * math.ceil(width / COARSE_FACTOR)
    strokes = round(STROKES_PER_1000_PX * max(height, width) / 1000)
    return CanvasSpec(height=height, width=width, n_noise=strokes, low_scale=1 / COARSE_FACTOR)


def coarse_view(layout: Layout) -> np.ndarray:
    """The ``(H/64, W/64)`` uint8 coarse view, exact area means of the canvas."""
    height, width = (math.ceil(side / COARSE_FACTOR) for side in (layout.height, layout.width))
    return render_region(layout, 0, 0, height, width, COARSE_FACTOR)


def stored_coarse_view(layout: Layout, quality: int, oversample: int = 4) -> np.ndarray:
    """The coarse view as a server makes it from a JPEG-tiled pyramid: the level
    ``oversample`` times finer, stored at JPEG ``quality``, decoded, area-averaged down.

    At 1/64 a digit is a few grey levels, and JPEG error on the finer level
    (0.6 grey levels on the marks at quality 95, through ``--view-oversample``
    4) is what the coarse network sees when served; training on exact views
    alone loses slides to it. The JPEG block grid is the level's, so one
    image equals the same level stored as tiles of any multiple of 8 px.
    """
    from PIL import Image

    from model_ops.lowres import low_resolution_view

    if COARSE_FACTOR % oversample:
        raise ValueError(f"oversample must divide {COARSE_FACTOR}, got {oversample}")
    height, width = (math.ceil(side / COARSE_FACTOR) for side in (layout.height, layout.width))
    level = render_region(layout, 0, 0, height * oversample, width * oversample, COARSE_FACTOR // oversample)
    stored = io.BytesIO()
    Image.fromarray(level).save(stored, "JPEG", quality=quality)
    decoded = np.asarray(Image.open(stored))
    return low_resolution_view(decoded[..., None], (height, width)).numpy()[..., 0]


def shifted(layout: Layout, top: int, left: int, height: int, width: int) -> Layout:
    """The box ``[top, top+height) x [left, left+width)`` of ``layout`` as a canvas of its own.

    Keeps the objects that touch the box, in box coordinates (some may
    stick out: rendering clips them); the box may reach outside the canvas,
    where it is empty.
    """
    touch = (
        (layout.ys < top + height)
        & (layout.ys + layout.sprites.shape[1] > top)
        & (layout.xs < left + width)
        & (layout.xs + layout.sprites.shape[2] > left)
    )
    return dataclasses.replace(
        layout,
        height=height,
        width=width,
        ys=layout.ys[touch] - top,
        xs=layout.xs[touch] - left,
        classes=layout.classes[touch],
        sprites=layout.sprites[touch],
    )


def region_view(layout: Layout, top: int, left: int, region_size: Sequence[int], factor: int) -> np.ndarray:
    """The uint8 view of the level-0 region at ``(top, left)``, area-downsampled by ``factor``.

    Equals ``low_resolution_view`` of the region cut with zeros outside the
    canvas, since the blocks are aligned on the region's corner.
    """
    rows, cols = (int(size) for size in region_size)
    if rows % factor or cols % factor:
        raise ValueError(f"region {rows}x{cols} is not a whole number of {factor}x{factor} blocks")
    box = shifted(layout, top, left, rows, cols)
    return render_region(box, 0, 0, rows // factor, cols // factor, factor)


class LayoutImage(MultiResolutionImage):
    """A canvas read from its layout, view by view and patch by patch (never whole)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.layout.height, self.layout.width, 1

    def low_view(self, size: Sequence[int]) -> np.ndarray:
        height, width = self.layout.height, self.layout.width
        factor = height // int(size[0])
        if factor * int(size[0]) != height or factor * int(size[1]) != width:
            raise ValueError(
                f"an exact view of a {height}x{width} canvas needs a whole factor, not size {tuple(size)}"
            )
        return render_region(self.layout, 0, 0, int(size[0]), int(size[1]), factor)[..., None]

    def read_patches(self, offsets: np.ndarray, size: Sequence[int]) -> np.ndarray:
        rows, cols = (int(s) for s in size)
        patches = [
            render_region(self.layout, int(y), int(x), rows, cols) for y, x in np.reshape(offsets, (-1, 2))
        ]
        return np.stack(patches)[..., None]

    def region_views(
        self, offsets: np.ndarray, region_size: Sequence[int], view_size: Sequence[int]
    ) -> np.ndarray:
        """Views ``(K, vh, vw, 1)`` of regions at level-0 ``offsets``; the pipeline calls this if present."""
        factor = int(region_size[0]) // int(view_size[0])
        if factor * int(view_size[0]) != int(region_size[0]) or factor * int(view_size[1]) != int(
            region_size[1]
        ):
            raise ValueError(
                f"region {tuple(region_size)} is not a whole multiple of view {tuple(view_size)}"
            )
        views = [region_view(self.layout, int(y), int(x), region_size, factor) for y, x in offsets]
        return np.stack(views)[..., None]


class StoredLayoutImage(LayoutImage):
    """A canvas whose coarse view is made as from a JPEG-tiled pyramid at ``quality``
    (:func:`stored_coarse_view`): what a server reading the file by tile reference sees."""

    def __init__(self, layout: Layout, quality: int, oversample: int = 4) -> None:
        super().__init__(layout)
        self.quality = quality
        self.oversample = oversample
        self._view: np.ndarray | None = None  # made once: an evaluation grid reads it per setting

    def low_view(self, size: Sequence[int]) -> np.ndarray:
        if self._view is None:
            self._view = stored_coarse_view(self.layout, self.quality, self.oversample)
        view = self._view
        if view.shape != tuple(int(side) for side in size):
            raise ValueError(f"a stored coarse view is {view.shape}, not {tuple(size)}")
        return view[..., None]
