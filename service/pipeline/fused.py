"""Everything after decoding as one graph, for a batch of same-shape images.

Calling the stages one by one costs a signature call and a conversion per
stage (about 4.5 ms an image on two cores, and ten draws of the sampler
took 1.5 ms as their own call); run inside one ``tf.function`` the same ops
cost what ``predict_image`` costs. Stage times still come out: a
``tf.timestamp`` that depends on a stage's outputs marks when it finished.

The graph takes a batch, so requests that arrive together share the
attention call, one feature call for all their patches (the patch size is
fixed) and the head. Every image keeps its own seed: the sampler keys each
row by its seed, so an image gets the same cells alone or in any batch.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from model_ops import geometry
from model_ops.expectation import aggregate
from model_ops.lowres import low_resolution_view
from model_ops.patch_ops import extract_patches
from model_ops.sampling import MODES, Mode, sample_positions
from service.models.servable import ServableModel

# The stages the graph runs, in order (decoding happens before it).
STAGES = ("lowres", "attention", "sampling", "extract", "features", "aggregate", "head")


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """NumPy outputs for a batch of B images with N patches each."""

    probabilities: np.ndarray  # (B, K)
    attention: np.ndarray  # (B, Sh, Sw)
    cells: np.ndarray  # (B, N, 2)
    offsets: np.ndarray  # (B, N, 2)
    patch_probabilities: np.ndarray  # (B, N)
    patches: np.ndarray | None  # (B, N, ph, pw, C) uint8, when asked for
    cell_step: tuple[float, float]
    cell_origin: tuple[float, float]
    marks: tuple[float, ...]  # epoch seconds: the graph's start, then the end of each stage

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage, for the whole batch."""
        return {stage: self.marks[i + 1] - self.marks[i] for i, stage in enumerate(STAGES)}


class FusedGraph:
    """One model's pipeline as a graph, traced per sampling mode (shapes are dynamic)."""

    def __init__(self, model: ServableModel) -> None:
        spec = model.spec
        self._model = model
        self._sizes = np.array([*spec.patch_size, spec.receptive_field], np.int32)
        c = spec.channels
        signature = [
            tf.TensorSpec([None, None, None, c], tf.uint8),  # images
            tf.TensorSpec([2], tf.int32),  # low view size
            tf.TensorSpec([], tf.int32),  # patches per image
            tf.TensorSpec([None], tf.int64),  # one seed per image
            tf.TensorSpec([3], tf.int32),  # patch size, receptive field
        ]
        self._graphs = {mode: tf.function(self._graph(mode), input_signature=signature) for mode in MODES}

    def _graph(self, mode: Mode) -> Callable[..., dict[str, tf.Tensor]]:
        spec, model = self._model.spec, self._model

        def run(
            images: tf.Tensor, low_shape: tf.Tensor, n_patches: tf.Tensor, seeds: tf.Tensor, sizes: tf.Tensor
        ) -> dict[str, tf.Tensor]:
            patch_size, receptive_field = sizes[0:2], sizes[2]
            marks = [tf.timestamp()]

            def stage(*inputs: tf.Tensor) -> list[tf.Tensor]:
                """``inputs`` held back until the last mark: stages run strictly in turn."""
                with tf.control_dependencies(marks[-1:]):
                    return [tf.identity(x) for x in inputs]

            def mark(*outputs: tf.Tensor) -> None:
                # Through an identity: once a called signature is inlined, a
                # control edge from the call waits for its side effects only.
                with tf.control_dependencies([tf.identity(x) for x in outputs]):
                    marks.append(tf.timestamp())

            [images] = stage(images)
            x_low = low_resolution_view(images, low_shape)
            mark(x_low)
            attention = model.attention(*stage(x_low))
            mark(attention)
            [attention] = stage(attention)
            cells, probabilities = sample_positions(attention, n_patches, spec.replace, mode=mode, seed=seeds)
            high_shape = tf.shape(images)[1:3]
            attention_shape = tf.shape(attention)[1:]
            offsets = geometry.cells_to_offsets(
                cells, low_shape, high_shape, attention_shape, patch_size, receptive_field
            )
            mark(offsets, probabilities)
            held_images, held_offsets = stage(images, offsets)
            patches = extract_patches(held_images, held_offsets, spec.patch_size)
            mark(patches)
            flat = tf.reshape(patches, tf.concat([[-1], tf.shape(patches)[2:]], axis=0))
            features = model.features(*stage(flat))
            features = tf.reshape(features, [tf.shape(images)[0], n_patches, -1])
            mark(features)
            held_features, held_probabilities = stage(features, probabilities)
            estimate = aggregate(held_features, held_probabilities, spec.replace)
            mark(estimate)
            classes = model.head(*stage(estimate))
            mark(classes)
            steps, origin = geometry.cell_grid(
                low_shape, high_shape, attention_shape, receptive_field, ndim=2
            )
            return {
                "probabilities": classes,
                "attention": attention,
                "cells": cells,
                "offsets": offsets,
                "patch_probabilities": probabilities,
                "patches": patches,
                "cell_step": steps,
                "cell_origin": origin,
                "marks": tf.stack(marks),
            }

        return run

    def run(
        self,
        images: Sequence[tf.Tensor],
        low_shape: tuple[int, int],
        n_patches: int,
        seeds: Sequence[int],
        mode: Mode,
        with_patches: bool = False,
    ) -> BatchResult:
        """``images``: uint8 (1, H, W, C) tensors of one shape, whose low view is ``low_shape``."""
        batch = images[0] if len(images) == 1 else tf.concat(list(images), axis=0)
        out = self._graphs[mode](
            batch,
            np.array(low_shape, np.int32),
            np.int32(n_patches),
            np.array(seeds, np.int64),
            self._sizes,
        )
        return BatchResult(
            probabilities=out["probabilities"].numpy(),
            attention=out["attention"].numpy(),
            cells=out["cells"].numpy(),
            offsets=out["offsets"].numpy(),
            patch_probabilities=out["patch_probabilities"].numpy(),
            patches=out["patches"].numpy() if with_patches else None,
            cell_step=tuple(out["cell_step"].numpy().tolist()),
            cell_origin=tuple(out["cell_origin"].numpy().tolist()),
            marks=tuple(out["marks"].numpy().tolist()),
        )


_graphs: weakref.WeakKeyDictionary[ServableModel, FusedGraph] = weakref.WeakKeyDictionary()
_graphs_lock = threading.Lock()


def fused_graph(model: ServableModel) -> FusedGraph:
    """The model's graph, built once per loaded version (and gone with it)."""
    with _graphs_lock:
        graph = _graphs.get(model)
        if graph is None:
            graph = _graphs[model] = FusedGraph(model)
        return graph
