"""Two-level prediction: the coarse view of the whole image picks K regions,
each region's view picks N patches in it, and the features of the K x N
full-resolution patches make the estimate (:mod:`model_ops.two_level`).

Only what the model looks at is read from the source: the coarse view (the
one-level low view, from a pyramid level ``--view-oversample`` times finer), the K
region views (:meth:`~service.pipeline.sources.ImageSource.region_views`,
from the level nearest the fine scale) and the K x N patches at level 0.
Stages, each timed and each preceded by a check that the caller is still
there: ``coarse`` (read the coarse view), ``coarse_attention``, ``tissue``
(only with a tissue mask: background cells get zero attention), ``regions``
(draw K regions), ``region_views``, ``fine_attention`` (one call for all
regions), ``sampling`` (N patches per region), ``extract``, ``features`` (one
call for all patches), ``aggregate`` (the two-level estimator's forward
value), ``head``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from model_ops import geometry, tissue
from model_ops.export import ModelMetadata, TwoLevelSpec
from model_ops.sampling import Mode
from model_ops.two_level import aggregate_two_level, sample_patches_in_regions
from service.errors import InvalidInput
from service.models.servable import ServableModel
from service.pipeline import extract, features, head, lowres, sampling
from service.pipeline.prediction import Prediction, PredictOptions, Stages
from service.pipeline.sources import ImageSource

STAGES = (
    "coarse",
    "coarse_attention",
    "tissue",
    "regions",
    "region_views",
    "fine_attention",
    "sampling",
    "extract",
    "features",
    "aggregate",
    "head",
)


@dataclasses.dataclass(frozen=True)
class Regions:
    """The K chosen regions; boxes of ``size`` at level-0 ``offsets``."""

    offsets: np.ndarray  # (K, 2) int top-left (y, x) in level-0 pixels
    size: tuple[int, int]
    cells: np.ndarray  # (K, 2) int coarse-map cells
    probabilities: np.ndarray  # (K,) coarse attention of each cell
    fine_attention: np.ndarray  # (K, Fh, Fw) each region's fine map
    fine_cell_step: tuple[float, float]  # level-0 size of one fine cell (y, x)
    fine_cell_origin: tuple[float, float]  # level-0 start of fine cell (0, 0), from the region's corner


@dataclasses.dataclass(frozen=True)
class TwoLevelPrediction(Prediction):
    """A :class:`Prediction` whose ``attention`` is the coarse map and whose
    patches are every region's, region by region (``cells`` and
    ``patch_probabilities`` then of the fine maps)."""

    regions: Regions
    patch_regions: np.ndarray  # (K*N,) int index in ``regions`` of each patch
    coarse_view: np.ndarray | None  # (h, w, C) uint8 when asked for
    tissue_cells: int  # coarse cells the tissue mask kept (all without one)


def check_n_regions(n_regions: int, spec: ModelMetadata) -> int:
    """Resolve 0 to the model default and bound the rest."""
    two_level = _two_level(spec)
    n = n_regions or two_level.n_regions
    if not 1 <= n <= two_level.max_regions:
        raise InvalidInput(
            f"n_regions must be between 1 and {two_level.max_regions} for model "
            f"{spec.name} (0 for its default {two_level.n_regions}), got {n_regions}",
            field="n_regions",
        )
    return n


def _two_level(spec: ModelMetadata) -> TwoLevelSpec:
    if spec.two_level is None:
        raise ValueError(f"model {spec.name!r} is a one-level model")
    return spec.two_level


def _check_available(n: int, available: int, what: str, field: str, draws_distinct: bool) -> None:
    """Refuse more distinct draws than there are cells to draw from."""
    if draws_distinct and n > available:
        raise InvalidInput(
            f"{field}={n} exceeds the {available} {what} of this image "
            "(only sampling with replacement can draw more)",
            field=field,
        )


def run(
    model: ServableModel,
    source: ImageSource,
    options: PredictOptions,
    n_patches: int,
    seed: int,
    stages: Stages,
) -> TwoLevelPrediction:
    """One image through both levels; ``n_patches`` is per region, already checked."""
    spec = model.spec
    two_level = _two_level(spec)
    n_regions = check_n_regions(options.n_regions, spec)
    mode: Mode = options.mode
    high_shape = source.shape[:2]
    with stages.stage("coarse"):
        x_coarse = lowres.low_view(source, spec)
    coarse_shape = (int(x_coarse.shape[1]), int(x_coarse.shape[2]))
    with stages.stage("coarse_attention"):
        coarse = model.coarse_attention(x_coarse)
    tissue_cells = int(coarse.shape[1]) * int(coarse.shape[2])
    if options.tissue_mask == "otsu":
        with stages.stage("tissue"):
            coarse, tissue_cells = _mask_tissue(x_coarse, coarse, spec.receptive_field)
    with stages.stage("regions"):
        what = "tissue cells" if options.tissue_mask != "off" else "coarse attention cells"
        distinct = not two_level.replace_regions or mode == "top_k"
        _check_available(n_regions, tissue_cells, what, "n_regions", distinct)
        region_spec = dataclasses.replace(
            spec, patch_size=two_level.region_size, replace=two_level.replace_regions
        )
        regions = sampling.sample(coarse, region_spec, n_regions, mode, seed, coarse_shape, high_shape)
    region_size = (two_level.region_size[0], two_level.region_size[1])
    view_size = two_level.fine_view_shape()
    with stages.stage("region_views"):
        views = source.region_views(regions.offsets.numpy()[0], region_size, view_size)
    with stages.stage("fine_attention"):
        fine = model.fine_attention(views)
    with stages.stage("sampling"):
        fine_shape = (int(fine.shape[1]), int(fine.shape[2]))
        distinct = not spec.replace or mode == "top_k"
        _check_available(
            n_patches, fine_shape[0] * fine_shape[1], "fine attention cells", "n_patches", distinct
        )
        sizes = np.array(
            [
                n_patches,
                *view_size,
                *region_size,
                *fine_shape,
                *spec.patch_size,
                two_level.fine_receptive_field,
            ],
            np.int32,
        )
        cells, patch_probs, offsets, steps, origin = _patches(
            fine[None], regions.offsets, sizes, np.int64(seed), spec.replace, mode
        )
    with stages.stage("extract"):
        patches = extract.extract(source, tf.reshape(offsets, [1, -1, 2]), spec)
    with stages.stage("features"):
        patch_features = features.patch_features(model, patches)
    with stages.stage("aggregate"):
        estimate = _estimate(
            tf.reshape(patch_features, [1, n_regions, n_patches, -1]),
            regions.probabilities,
            patch_probs,
            two_level.replace_regions,
            spec.replace,
        )
    with stages.stage("head"):
        probabilities = head.classify(model, estimate)
    return TwoLevelPrediction(
        probabilities=probabilities.numpy()[0],
        attention=coarse.numpy()[0],
        cells=cells.numpy().reshape(-1, 2),
        offsets=offsets.numpy().reshape(-1, 2),
        patch_probabilities=patch_probs.numpy().reshape(-1),
        crops=patches.numpy()[0] if options.include_crops else None,
        image_shape=source.shape,
        cell_step=tuple(regions.cell_step.numpy().tolist()),
        cell_origin=tuple(regions.cell_origin.numpy().tolist()),
        seed=seed,
        timings=stages.timings,
        regions=Regions(
            offsets=regions.offsets.numpy()[0],
            size=region_size,
            cells=regions.cells.numpy()[0],
            probabilities=regions.probabilities.numpy()[0],
            fine_attention=fine.numpy(),
            fine_cell_step=tuple(steps.numpy().tolist()),
            fine_cell_origin=tuple(origin.numpy().tolist()),
        ),
        patch_regions=np.repeat(np.arange(n_regions), n_patches),
        coarse_view=x_coarse.numpy()[0] if options.include_coarse_view else None,
        tissue_cells=tissue_cells,
    )


def _mask_tissue(x_coarse: tf.Tensor, coarse: tf.Tensor, receptive_field: int) -> tuple[tf.Tensor, int]:
    """The coarse map with zero attention on the background cells of the coarse view
    (Otsu), renormalised, and how many cells are tissue."""
    keep = tissue.cell_mask(tissue.tissue_mask(x_coarse.numpy()[0]), coarse.shape[1:], receptive_field)
    return tissue.masked_attention(coarse, keep), int(keep.sum())


@tf.function(reduce_retracing=True)
def _patches(
    fine: tf.Tensor, regions: tf.Tensor, sizes: tf.Tensor, seed: tf.Tensor, replace: bool, mode: Mode
) -> tuple[tf.Tensor, ...]:
    """N cells of each fine map ``(1, K, Fh, Fw)`` (each region with its own seed),
    their level-0 offsets, and the fine cell grid relative to a region: one graph,
    since the per-row sampler is ~50x slower op by op."""
    n_patches, view_size, region_size = sizes[0], sizes[1:3], sizes[3:5]
    fine_shape, patch_size, receptive_field = sizes[5:7], sizes[7:9], sizes[9]
    cells, probabilities = sample_patches_in_regions(fine, n_patches, replace, mode, seed)
    offsets = geometry.patch_offsets(
        regions, cells, view_size, region_size, fine_shape, patch_size, receptive_field
    )
    steps, origin = geometry.cell_grid(view_size, region_size, fine_shape, receptive_field, ndim=2)
    return cells, probabilities, offsets, steps, origin


@tf.function(reduce_retracing=True)
def _estimate(
    features: tf.Tensor,
    region_probs: tf.Tensor,
    patch_probs: tf.Tensor,
    replace_regions: bool,
    replace_patches: bool,
) -> tf.Tensor:
    """The two-level estimate ``(1, D)`` as one graph (two nested aggregates of small ops)."""
    return aggregate_two_level(features, region_probs, patch_probs, replace_regions, replace_patches)
