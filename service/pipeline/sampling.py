"""Sampling stage: choose N cells from the attention map and place their
full-resolution patches."""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from model_ops.geometry import cells_to_offsets
from model_ops.sampling import sample_positions
from service.pipeline.errors import InvalidInput
from service.pipeline.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Positions:
    cells: tf.Tensor  # int32 (1, N, 2) attention-map cells
    probabilities: tf.Tensor  # float32 (1, N) attention of each cell
    offsets: tf.Tensor  # int32 (1, N, 2) top-left (y, x) in full-resolution pixels


def check_n_patches(n_patches: int, spec: ModelSpec) -> int:
    """Resolve 0 to the model default and bound the rest."""
    n = n_patches or spec.n_patches
    if not 1 <= n <= spec.max_patches:
        raise InvalidInput(f"n_patches must be between 1 and {spec.max_patches} for model "
                           f"{spec.name} (0 for its default {spec.n_patches}), got {n_patches}",
                           field="n_patches")
    return n


def sample(attention: tf.Tensor, spec: ModelSpec, n_patches: int, mode: str, seed: int,
           low_shape: tuple[int, int], high_shape: tuple[int, int]) -> Positions:
    """Draw ``n_patches`` cells (``mode`` "sample" or "top_k")."""
    cells_available = int(attention.shape[1]) * int(attention.shape[2])
    if (not spec.replace or mode == "top_k") and n_patches > cells_available:
        raise InvalidInput(f"n_patches={n_patches} exceeds the {cells_available} attention cells of "
                           f"this image (only sampling with replacement can draw more)", field="n_patches")
    cells, probabilities = sample_positions(attention, n_patches, spec.replace, mode=mode, seed=seed)
    offsets = cells_to_offsets(cells, low_shape, high_shape, tuple(attention.shape[1:]),
                               spec.patch_size, spec.receptive_field)
    return Positions(cells=cells, probabilities=probabilities, offsets=offsets)


def cell_grid(low_shape: tuple[int, int], high_shape: tuple[int, int],
              attention_shape: tuple[int, int], receptive_field: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Full-resolution (step, origin) per axis of the attention cells: cell i of an
    axis starts at ``origin + i * step`` (the geometry of ``cells_to_offsets``)."""
    steps, origins = [], []
    for low, high, cells in zip(low_shape, high_shape, attention_shape):
        scale = high / low
        steps.append((low - receptive_field) * scale / cells)
        origins.append(receptive_field / 2 * scale)
    return (steps[0], steps[1]), (origins[0], origins[1])
