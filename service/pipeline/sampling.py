"""Sampling stage: choose N cells from the attention map and place their
full-resolution patches."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import tensorflow as tf

from model_ops import geometry
from model_ops.export import ModelMetadata
from model_ops.sampling import Mode, sample_positions
from service.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class Positions:
    cells: tf.Tensor  # int32 (1, N, 2) attention-map cells
    probabilities: tf.Tensor  # float32 (1, N) attention of each cell
    offsets: tf.Tensor  # int32 (1, N, 2) top-left (y, x) in full-resolution pixels
    cell_step: tf.Tensor  # float64 (2,) full-resolution size of one attention cell (y, x)
    cell_origin: tf.Tensor  # float64 (2,) full-resolution start of cell (0, 0)


def check_n_patches(n_patches: int, spec: ModelMetadata) -> int:
    """Resolve 0 to the model default and bound the rest."""
    n = n_patches or spec.n_patches
    if not 1 <= n <= spec.max_patches:
        raise InvalidInput(
            f"n_patches must be between 1 and {spec.max_patches} for model "
            f"{spec.name} (0 for its default {spec.n_patches}), got {n_patches}",
            field="n_patches",
        )
    return n


def _too_many(n_patches: int, cells: str) -> InvalidInput:
    return InvalidInput(
        f"n_patches={n_patches} exceeds {cells} of this image (only sampling with replacement can draw more)",
        field="n_patches",
    )


def refusal(error: tf.errors.InvalidArgumentError, n_patches: int) -> Exception:
    """The client's error in a failed graph's assertion (the graph draws
    without knowing the map's size beforehand), or the failure itself."""
    if "n_patches exceeds the number of attention cells" in error.message:
        # the assertion's message carries its operands: "[y (...) = ] [cells]"
        cells = re.search(r"\[y \([^)]*\) = \] \[(\d+)\]", error.message)
        return _too_many(n_patches, f"the {cells[1]} attention cells" if cells else "the attention cells")
    return error


def sample(
    attention: tf.Tensor,
    spec: ModelMetadata,
    n_patches: int,
    mode: Mode,
    seed: int,
    low_shape: tuple[int, int],
    high_shape: tuple[int, int],
) -> Positions:
    """Draw ``n_patches`` cells (``mode`` "sample" or "top_k")."""
    cells_available = int(attention.shape[1]) * int(attention.shape[2])
    if (not spec.replace or mode == "top_k") and n_patches > cells_available:
        raise _too_many(n_patches, f"the {cells_available} attention cells")
    # the graph's integer inputs travel as one vector: one conversion per call, not seven
    sizes = np.array([n_patches, *low_shape, *high_shape, *spec.patch_size, spec.receptive_field], np.int32)
    return Positions(*_positions(attention, sizes, np.int64(seed), spec.replace, mode))


@tf.function(reduce_retracing=True)
def _positions(
    attention: tf.Tensor, sizes: tf.Tensor, seed: tf.Tensor, replace: bool, mode: Mode
) -> tuple[tf.Tensor, ...]:
    """Sampling, placement and the cell grid as one graph: the sampler's
    per-row loop is ~50x slower run op by op in eager mode."""
    n_patches, low_shape, high_shape = sizes[0], sizes[1:3], sizes[3:5]
    patch_size, receptive_field = sizes[5:7], sizes[7]
    cells, probabilities = sample_positions(attention, n_patches, replace, mode=mode, seed=seed)
    attention_shape = tf.shape(attention)[1:]
    offsets = geometry.cells_to_offsets(
        cells, low_shape, high_shape, attention_shape, patch_size, receptive_field
    )
    steps, origin = geometry.cell_grid(low_shape, high_shape, attention_shape, receptive_field, ndim=2)
    return cells, probabilities, offsets, steps, origin
