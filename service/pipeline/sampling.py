"""Sampling stage: choose N cells from the attention map and place their
full-resolution patches."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from model_ops import geometry
from model_ops.export import ModelMetadata
from model_ops.sampling import sample_positions
from service.pipeline.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class Positions:
    cells: tf.Tensor  # int32 (1, N, 2) attention-map cells
    probabilities: tf.Tensor  # float32 (1, N) attention of each cell
    offsets: tf.Tensor  # int32 (1, N, 2) top-left (y, x) in full-resolution pixels


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


def sample(
    attention: tf.Tensor,
    spec: ModelMetadata,
    n_patches: int,
    mode: str,
    seed: int,
    low_shape: tuple[int, int],
    high_shape: tuple[int, int],
) -> Positions:
    """Draw ``n_patches`` cells (``mode`` "sample" or "top_k")."""
    cells_available = int(attention.shape[1]) * int(attention.shape[2])
    if (not spec.replace or mode == "top_k") and n_patches > cells_available:
        raise InvalidInput(
            f"n_patches={n_patches} exceeds the {cells_available} attention cells of "
            f"this image (only sampling with replacement can draw more)",
            field="n_patches",
        )
    cells, probabilities, offsets = _positions(
        attention,
        tf.constant(n_patches),
        tf.constant(seed, tf.int64),
        tf.constant(low_shape),
        tf.constant(high_shape),
        tf.constant(spec.patch_size),
        tf.constant(spec.receptive_field),
        spec.replace,
        mode,
    )
    return Positions(cells=cells, probabilities=probabilities, offsets=offsets)


@tf.function(reduce_retracing=True)
def _positions(
    attention: tf.Tensor,
    n_patches: tf.Tensor,
    seed: tf.Tensor,
    low_shape: tf.Tensor,
    high_shape: tf.Tensor,
    patch_size: tf.Tensor,
    receptive_field: tf.Tensor,
    replace: bool,
    mode: str,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Sampling and placement as one graph: the sampler's per-row loop is
    ~50x slower run op by op in eager mode."""
    cells, probabilities = sample_positions(attention, n_patches, replace, mode=mode, seed=seed)
    offsets = geometry.cells_to_offsets(
        cells, low_shape, high_shape, tf.shape(attention)[1:], patch_size, receptive_field
    )
    return cells, probabilities, offsets


def cell_grid(
    low_shape: tuple[int, int],
    high_shape: tuple[int, int],
    attention_shape: tuple[int, int],
    receptive_field: int,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Full-resolution (step, origin) per axis of the attention cells, for the response."""
    steps, origins = geometry.cell_grid(low_shape, high_shape, attention_shape, receptive_field)
    return tuple(steps.numpy().tolist()), tuple(origins.numpy().tolist())
