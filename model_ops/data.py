"""Multi-resolution inputs.

Two views of the same idea, "an image available at several resolutions":

- :class:`MultiResolutionImage`, one image that can give a low-resolution
  view and full-resolution patches without ever being loaded whole. The
  staged inference path (attention on the low view, sampling, then reading
  only the sampled patches) is written against it; :class:`InMemoryImage`
  is the in-memory implementation and readers of tiled/pyramidal files
  subclass it.
- :class:`FromTensors`, the original library's training input: a list of
  in-memory arrays, lowest resolution first, batched for ``Model.fit`` as a
  ``keras.utils.PyDataset``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import keras
import numpy as np

from model_ops.lowres import low_resolution_view
from model_ops.patch_ops import extract_patches


class MultiResolutionImage(abc.ABC):
    """An ``H x W x C`` uint8 image readable as a low view or as patches."""

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int, int]:
        """Full-resolution ``(H, W, C)``."""

    @abc.abstractmethod
    def low_view(self, size: Sequence[int]) -> np.ndarray:
        """The ``(h, w, C)`` uint8 view of the whole image at ``size``.

        Must equal ``lowres.low_resolution_view`` of the full image, or be as
        close as the source allows (e.g. a pyramid level resampled the same way).
        """

    @abc.abstractmethod
    def read_patches(self, offsets: np.ndarray, size: Sequence[int]) -> np.ndarray:
        """Patches ``(N, *size, C)`` uint8 with top-left corners ``offsets`` ``(N, 2)``.

        Offsets may fall partly or wholly outside the image; those pixels are 0.
        """


class InMemoryImage(MultiResolutionImage):
    """A decoded image held in memory (``(H, W, C)`` uint8)."""

    def __init__(self, pixels: np.ndarray):
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 3:
            raise ValueError(f"expected (H, W, C) uint8 pixels, got {pixels.shape} {pixels.dtype}")
        self.pixels = pixels

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape)

    def low_view(self, size: Sequence[int]) -> np.ndarray:
        return low_resolution_view(self.pixels, tuple(size)).numpy()

    def read_patches(self, offsets: np.ndarray, size: Sequence[int]) -> np.ndarray:
        offsets = np.asarray(offsets, np.int32).reshape(1, -1, 2)
        return extract_patches(self.pixels[None], offsets, tuple(size))[0].numpy()


class FromTensors(keras.utils.PyDataset):
    """Batches ``((x_0, ..., x_L), y)`` of in-memory arrays for ``Model.fit``.

    ``xs`` is a list of arrays with the same first (sample) dimension, one per
    resolution, lowest first (``[x_low, x_high]`` for ``attention_sampling``);
    ``y`` is an array, a list of arrays, or ``None`` (batches are then inputs
    only). A single-element ``xs`` yields the bare array. ``shuffle``
    reorders samples every epoch (reproducibly with ``seed``).
    """

    def __init__(
        self,
        xs: Sequence[np.ndarray],
        y=None,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._xs = [np.asarray(x) for x in xs]
        self._y = y
        self._is_list = isinstance(y, (list, tuple))
        self._targets = [] if y is None else [np.asarray(t) for t in (y if self._is_list else [y])]
        lengths = {len(x) for x in self._xs} | {len(t) for t in self._targets}
        if len(lengths) != 1:
            raise ValueError(f"all inputs and targets need the same length, got {sorted(lengths)}")
        self._n = lengths.pop()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(self._n)
        self.on_epoch_end()

    def data(self, level: int) -> np.ndarray:
        """All samples at resolution ``level`` (0 = lowest)."""
        return self._xs[level]

    def targets(self):
        """The targets as given."""
        return self._y

    def __len__(self) -> int:
        return math.ceil(self._n / self.batch_size)

    def __getitem__(self, index: int):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        xs = [x[rows] for x in self._xs]
        inputs = xs[0] if len(xs) == 1 else tuple(xs)
        if self._y is None:
            return (inputs,)
        targets = tuple(t[rows] for t in self._targets)
        return inputs, targets if self._is_list else targets[0]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._rng.shuffle(self._order)
