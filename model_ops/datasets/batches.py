"""Batches of generated canvases for Keras: ``((x_low, x_high), label)``, all pixels uint8.

Each batch is rendered when asked for, so a data set of any length costs a
batch of memory. ``x_low`` is made by ``model_ops.lowres.low_resolution_view``,
the same function the exported model and the server use.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from model_ops.datasets.megapixel_digits import CanvasSpec, Layout, make_layout, render_canvas


class CanvasBatches(keras.utils.PyDataset):
    """``n_canvases`` canvases of one split in batches; optionally new canvases every epoch."""

    def __init__(
        self,
        spec: CanvasSpec,
        split: str,
        seed: int,
        n_canvases: int,
        batch_size: int,
        fresh_each_epoch: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.spec, self.split, self.seed = spec, split, seed
        self.n_canvases, self.batch_size = n_canvases, batch_size
        self.fresh_each_epoch = fresh_each_epoch
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.n_canvases / self.batch_size)

    def layouts(self, batch: int) -> list[Layout]:
        """The layouts of batch ``batch`` of the current epoch."""
        start = batch * self.batch_size
        stop = min(start + self.batch_size, self.n_canvases)
        offset = self.epoch * self.n_canvases if self.fresh_each_epoch else 0
        return [make_layout(self.spec, self.split, self.seed, offset + i) for i in range(start, stop)]

    def __getitem__(self, batch: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        from model_ops.lowres import low_resolution_view

        layouts = self.layouts(batch)
        x_high = np.stack([render_canvas(layout) for layout in layouts])
        x_low = np.asarray(low_resolution_view(x_high, self.spec.low_shape))
        labels = np.array([layout.label for layout in layouts], dtype=np.int64)
        return (x_low, x_high), labels

    def on_epoch_end(self) -> None:
        self.epoch += 1
