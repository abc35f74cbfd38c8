"""The pipeline's ``ImageSource`` over a tiled reader: the low-resolution view
from a pyramid level finer than it, patches as full-resolution regions, and a
two-level model's region views from the level nearest their scale."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from model_ops.lowres import low_resolution_view
from service import budget, tracing
from service.errors import InvalidInput, TooLarge
from service.pipeline.sources import ImageSource, shared_tensor
from service.tiles.readers.base import Reader
from service.tiles.stats import ReadStats, Recorder

# The most pixels a level read for a finer view may have. The finer level costs
# oversample² times the view's pixels: worth it for a coarse view of a few
# megapixels (at 1/64 a mark is a few grey levels), not for a large view, where
# objects span many pixels and the level alone could be a gigabyte.
OVERSAMPLED_PIXELS = 64 << 20


def is_aligned(level_shape: tuple[int, int], full_shape: tuple[int, int]) -> bool:
    """Whether the level covers exactly the image: its size times an integer
    factor is the full size. A level of ceil(H / f) rows whose last row is a
    partial block covers more than the image, and resampling it to the view
    shifts the view by up to one view pixel at the far edge."""
    factor = max(1, round(full_shape[0] / level_shape[0]))
    return level_shape[0] * factor == full_shape[0] and level_shape[1] * factor == full_shape[1]


def choose_level(level_shapes: list[tuple[int, int]], size: tuple[int, int]) -> int:
    """The level the low view of ``size`` is resampled from: the coarsest level
    still at least ``size`` on both sides (nearest to the model's scale without
    being coarser), preferring levels aligned with level 0; an unaligned one
    only when no aligned level but level 0 itself fits."""
    fits = [i for i, (h, w) in enumerate(level_shapes) if h >= size[0] and w >= size[1]]
    aligned = [i for i in fits if is_aligned(level_shapes[i], level_shapes[0])]
    candidates = aligned if aligned != [0] else fits
    return min(candidates, key=lambda i: level_shapes[i][0] * level_shapes[i][1], default=0)


class TileSource(ImageSource):
    """One request's view of a (shared) reader; counts what the request reads.

    ``oversample``: the low view is made from a level at least that many times
    its size where one is within ``max_level_pixels`` and ``OVERSAMPLED_PIXELS``
    (else the finest level between it and the view's own level that is). Pyramid levels are
    usually stored lossy (JPEG tiles), and at a gigapixel model's coarse scale
    an object is a mark of a few grey levels that JPEG quantises away;
    averaging a finer level's tiles down to the view removes most of that
    error (service/tiles/README.md).
    """

    def __init__(
        self,
        reader: Reader,
        channels: int,
        level: int | None,
        max_level_pixels: int,
        recorder: Recorder,
        oversample: int = 1,
    ) -> None:
        if level is not None and not 0 <= level < len(reader.grids):
            raise InvalidInput(
                f"tile.level {level} does not exist: the image has levels 0 to {len(reader.grids) - 1}",
                field="tile.level",
            )
        self._reader = reader
        self._channels = channels
        self._level = level
        self._max_level_pixels = max_level_pixels
        self._recorder = recorder
        self._oversample = oversample

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self._reader.level_shapes[0], self._channels)

    @property
    def read_stats(self) -> ReadStats:
        """What this request has read so far."""
        return self._recorder.request

    @property
    def format_name(self) -> str:
        return self._reader.format_name

    def level_for(self, size: tuple[int, int]) -> int:
        """The level the low view of ``size`` is made from: the request's hint, checked, or the best one."""
        shapes = self._reader.level_shapes
        if self._level is None:
            nearest = choose_level(shapes, size)
            finer = choose_level(shapes, (size[0] * self._oversample, size[1] * self._oversample))
            # the finest level between the two that the pixel limits allow
            pixels = [height * width for height, width in shapes]
            ceiling = min(pixels[finer], self._max_level_pixels, max(OVERSAMPLED_PIXELS, pixels[nearest]))
            allowed = [
                i for i in (finer, *range(len(shapes)), nearest) if pixels[nearest] <= pixels[i] <= ceiling
            ]
            return max(allowed, key=lambda i: pixels[i], default=nearest)
        height, width = shapes[self._level]
        if height < size[0] or width < size[1]:
            raise InvalidInput(
                f"tile.level {self._level} ({width}x{height}) is coarser than the model's "
                f"low-resolution view ({size[1]}x{size[0]}); use level "
                f"{choose_level(shapes, size)} or lower",
                field="tile.level",
            )
        return self._level

    @contextlib.contextmanager
    def _traced_read(self, level: int, regions: int) -> Iterator[None]:
        """An ``ats.tile.read`` span around reads of ``regions`` regions of
        ``level``, with the bytes they took from storage (cache hits take none)."""
        before = self._recorder.request.bytes_read
        with tracing.span("ats.tile.read", level=level, regions=regions) as span:
            yield
            span.set_attribute("ats.bytes_read", self._recorder.request.bytes_read - before)

    def low_view(self, size: tuple[int, int]) -> tf.Tensor:
        level = self.level_for(size)
        height, width = self._reader.level_shapes[level]
        if height * width > self._max_level_pixels:
            raise TooLarge(
                f"the image has no pyramid level close to the model's view: level {level} is "
                f"{width}x{height} = {height * width} pixels, over the server limit of "
                f"{self._max_level_pixels}; add pyramid levels to the file",
                field="tile.path",
            )
        # the level, converted tile by tile into the buffer TensorFlow reads, and as much
        # again for resampling it (measured): charged before a tile is decoded
        budget.before_decode(height * width, 2 * self._channels, f"{self.format_name} level {level}")
        with self._traced_read(level, regions=1):
            pixels = self._reader.read(level, 0, 0, height, width, self._channels, self._recorder)
        return low_resolution_view(shared_tensor(pixels), size)

    def level_for_scale(self, scale: tuple[float, float]) -> int:
        """The level views at ``scale`` (of level 0, per axis) are made from: by pixel size
        where the file states it, else by level size; never coarser than the scale."""
        if self._reader.base_mpp is not None:
            mpp_x, mpp_y = self._reader.base_mpp
            level = self._reader.level_for_mpp(min(mpp_x / scale[1], mpp_y / scale[0]))
            if level is not None:
                return level
        height, width = self._reader.level_shapes[0]
        return choose_level(
            self._reader.level_shapes, (math.ceil(height * scale[0]), math.ceil(width * scale[1]))
        )

    def region_views(
        self, offsets: np.ndarray, region_size: tuple[int, int], view_size: tuple[int, int]
    ) -> tf.Tensor:
        """Each region's box read from the level nearest the views' scale, resampled
        to ``view_size``: exactly the level-0 cut's view from level 0, within a level
        pixel of it from a coarser one (the box is rounded to the level's grid)."""
        scale = (view_size[0] / region_size[0], view_size[1] / region_size[1])
        level = self.level_for_scale(scale)
        (height, width), (level_height, level_width) = (
            self._reader.level_shapes[0],
            self._reader.level_shapes[level],
        )
        fy, fx = level_height / height, level_width / width
        box = (max(1, round(region_size[0] * fy)), max(1, round(region_size[1] * fx)))
        # the boxes as read (converted tile by tile) and stacked
        budget.before_decode(
            len(offsets) * box[0] * box[1], 2 * self._channels, f"{self.format_name} regions"
        )
        with self._traced_read(level, regions=len(offsets)):
            boxes = np.stack(
                [
                    self._reader.read(
                        level, round(y * fy), round(x * fx), *box, self._channels, self._recorder
                    )
                    for y, x in np.asarray(offsets).tolist()
                ]
            )
        return low_resolution_view(boxes, view_size)

    def patches(self, offsets: tf.Tensor, patch_size: tuple[int, int]) -> tf.Tensor:
        height, width = patch_size
        starts = np.asarray(offsets)[0]
        with self._traced_read(0, regions=len(starts)):
            crops = [
                self._reader.read(0, int(y), int(x), height, width, self._channels, self._recorder)
                for y, x in starts
            ]
        stacked = np.stack(crops) if crops else np.zeros((0, height, width, self._channels), np.uint8)
        return tf.convert_to_tensor(stacked[np.newaxis])
