"""The recipe of ``models/gigapixel-digits``: two-level attention over 10k-100k canvases.

The objects are those of megapixel digits, and a full-resolution patch is
cut and read the same way, so the one-level model's feature network and head
(``models/megapixel-digits/weights/2``) are reused as they are: its head reads
``Σ a f`` over the five digits, which is also what two-level attention gives
when the coarse map picks the regions of the digits and each fine map the
digit in its region. Only the two attention networks are trained, each
against the digit positions the generator knows (cross-entropy of the map's
softmax to equal mass on each digit), in two resumable stages:

1. ``coarse``: on coarse views (1/64) of training canvases. The objects look
   the same at every canvas size at a fixed scale, so one mid-size canvas
   (16k, a 256x256 view) teaches what a 100k view needs, except how much
   mass the rest of a view may keep: trained on 16k views as they are, the
   map left 20-35% of its mass off the digits at 100k (in one check 15% on
   the 500 strokes, 8% on the 2.4 million empty cells). So the training
   canvases carry the stroke count of a 100k canvas (``coarse_noise``), and
   the softmax of this stage also counts the empty cells of a larger canvas
   (``coarse_virtual_side``: one logit, the network's on an empty input,
   plus the log of their number, at no extra cost). An input gain
   (``COARSE_GAIN``) lifts the faint marks into the range of the tanh layers.
   Once K regions cover the five digits, the estimate weighs each digit by
   its coarse mass, so that mass must be even: a digit is every cell its box
   touches (``coarse_box_targets``), and the loss counts the mass leaking
   off the digits only a quarter as much as unevenness among them
   (``coarse_off_target_weight``). A digit's ink at 1/64 (9-21 grey levels)
   overlaps a stroke's (1-10), so evenness costs some leak: fit to the plain
   cross-entropy (as version 1 was), the digits of a 100k canvas kept
   94-96% of the mass with a spread (standard deviation over mean) of
   0.28-0.31 between them, and the vote went wrong on 3.5-7% of canvases;
   with a quarter weight they keep 91% with a spread of 0.18 (2% wrong).
   A served slide's coarse view comes from JPEG tiles: trained on exact
   views only, the JPEG error on the marks (0.6 grey levels on marks of
   2.6, at quality 95) cut the true class's mean probability on 12 100k
   slides from 0.96 to 0.78, while JPEG region views and patches left it
   unchanged. So half the views are made as a server makes them, at a
   JPEG quality drawn per canvas (``coarse_exact_share``,
   ``coarse_jpeg_min_quality``, ``coarse_jpeg_max_quality``), and the rest
   exact: fit to JPEG views alone, a map reads exact (lossless) slides
   worse. The noisier views get twice the canvases and 20 epochs. On 200
   fresh 100k canvases (sampled / top-k): 97.0 / 97.0% as served from
   quality 95 and 97.0 / 96.0% exact, against 69.5 / 80.5% and
   97.5 / 97.5% fit to exact views only;
2. ``fine``: on 256x256 views of 2048-px regions centred near a digit
   (jittered by up to a coarse cell and a half, as the coarse map places
   them), starting from the one-level attention network, which reads the
   same objects at nearly the same scale (0.12 against 1/8).

The exported defaults are K = 32 regions of N = 2 patches. The five digit
regions hold nearly all the coarse mass, so every draw after them adds
``Σ a G`` almost exactly, while the first draws of the without-replacement
estimator weigh the digits by drawing order (at K = 8 the first digit drawn
weighs about 0.3 and the last 0.1, enough to outvote a 3-against-2 canvas):
more regions dilute that order effect, and K = 32 costs 32 views of 256x256
next to a 1563x1563 coarse pass at 100k.
"""

from __future__ import annotations

import dataclasses
import pathlib

import keras
import numpy as np

from model_ops.datasets.digits import DIGIT_SIZE, SPLITS
from model_ops.datasets.gigapixel_digits import (
    COARSE_FACTOR,
    FINE_FACTOR,
    REGION_SIZE,
    coarse_view,
    gigapixel_spec,
    region_view,
    shifted,
    stored_coarse_view,
)
from model_ops.datasets.megapixel_digits import Layout, make_layout
from model_ops.export import TWO_LEVEL_FORMAT, ModelMetadata, TwoLevelSpec
from model_ops.layers import SampleSoftmax
from model_ops.training import networks
from model_ops.training import recipe as one_level
from model_ops.training.run_dir import RunDir

STAGES = ("coarse", "fine")
NET_NAMES = ("coarse_attention", "fine_attention", "features", "head")
COARSE_GAIN = 16.0
MAX_REGIONS = 64
ONE_LEVEL_WEIGHTS = "models/megapixel-digits/weights/2"
_PAD = -1  # no target cell


@dataclasses.dataclass
class GigapixelRecipe:
    """Sizes, epochs and learning rates of both stages and the model's defaults (K, N)."""

    seed: int = 0
    batch_size: int = 16
    coarse_side: int = 16384
    coarse_canvases: int = 1600
    coarse_val_canvases: int = 64
    coarse_epochs: int = 20
    coarse_lr: float = 3e-3
    coarse_noise: int = 500
    coarse_virtual_side: int = 300_000
    coarse_box_targets: bool = True
    coarse_off_target_weight: float = 0.25
    # coarse views made as a server makes them from JPEG-tiled slides, at a
    # quality drawn per canvas (scanners store 70 to 95); the rest exact
    coarse_exact_share: float = 0.5
    coarse_jpeg_min_quality: int = 70
    coarse_jpeg_max_quality: int = 95
    fine_canvases: int = 300
    fine_val_canvases: int = 40
    fine_epochs: int = 4
    fine_lr: float = 1e-3
    fine_jitter: int = 96
    n_regions: int = 32
    n_patches: int = 2

    scaled = one_level.Recipe.scaled

    def stage_fields(self, stage: str) -> dict:
        """The settings ``stage`` depends on (shared ones included): a resume must not change them."""
        own = {"coarse": ("coarse_",), "fine": ("fine_", "coarse_side")}[stage]
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name in ("seed", "batch_size") or f.name.startswith(own)
        }


@dataclasses.dataclass
class TwoLevelNets:
    """The four networks; the attention ones give logits ``(B, h, w, 1)`` of float pixels."""

    coarse_attention: keras.Model
    fine_attention: keras.Model
    features: keras.Model
    head: keras.Model

    def save(self, directory: pathlib.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in NET_NAMES:
            getattr(self, name).save_weights(directory / f"{name}.weights.h5")

    def load(self, directory: pathlib.Path) -> None:
        for name in NET_NAMES:
            getattr(self, name).load_weights(directory / f"{name}.weights.h5")

    def map_nets(self) -> tuple[keras.Model, keras.Model]:
        """The attention networks ending in their softmax, as the export and the pipeline take them."""
        return _map_net(self.coarse_attention, "coarse"), _map_net(self.fine_attention, "fine")


def _map_net(logits: keras.Model, name: str) -> keras.Model:
    x = keras.Input((None, None, 1), name=f"{name}_view")
    attention = SampleSoftmax(squeeze_channels=True, smooth=one_level.SMOOTH, name=f"{name}_map")(logits(x))
    return keras.Model(x, attention, name=f"{name}_attention_map")


def build_nets(one_level_weights: str | pathlib.Path) -> TwoLevelNets:
    """Fresh coarse attention (with its input gain); fine attention, features and head from one level."""
    weights = pathlib.Path(one_level_weights)
    view = keras.Input((None, None, 1), name="coarse_view")
    gained = keras.layers.Rescaling(COARSE_GAIN, name="coarse_gain")(view)
    coarse = keras.Model(view, networks.build_attention_net((None, None))(gained), name="coarse_logits")
    fine = networks.build_attention_net((None, None))
    features, head = networks.build_feature_net(), networks.build_head()
    for net, name in ((fine, "attention"), (features, "features"), (head, "head")):
        net.load_weights(weights / f"{name}.weights.h5")
    return TwoLevelNets(coarse, fine, features, head)


def model_metadata(recipe: GigapixelRecipe) -> ModelMetadata:
    """What the exported version declares (format 2, with its ``two_level`` section)."""
    return ModelMetadata(
        name="gigapixel-digits",
        classes=[str(c) for c in range(networks.N_CLASSES)],
        low_scale=1 / COARSE_FACTOR,
        patch_size=list(networks.PATCH_SIZE),
        n_patches=recipe.n_patches,
        max_patches=one_level.MAX_PATCHES,
        replace=False,
        receptive_field=0,
        channels=1,
        feature_dim=networks.FEATURE_DIM,
        format=TWO_LEVEL_FORMAT,
        two_level=TwoLevelSpec(
            region_size=[REGION_SIZE, REGION_SIZE],
            fine_scale=1 / FINE_FACTOR,
            n_regions=recipe.n_regions,
            max_regions=MAX_REGIONS,
            replace_regions=False,
        ),
    )


def digit_cells(layout: Layout, map_shape: tuple[int, int], width: int = 5, box: bool = False) -> np.ndarray:
    """Flat map cells ``(width, C)`` of each digit whose centre lies on ``layout``, padded with -1.

    Without ``box`` a digit is its centre cell (``C = 1``), as
    ``curriculum.attention_targets`` with radius 0 places it; with ``box`` it
    is every cell its 28x28 box touches (``C`` the most a box can touch at
    this scale), so that a loss may leave the digit's mass anywhere on them.
    Two digits on one cell count twice.
    """
    centres = layout.digit_centres
    inside = (centres >= 0).all(1) & (centres[:, 0] < layout.height) & (centres[:, 1] < layout.width)
    scale = np.array(map_shape) / np.array([layout.height, layout.width])
    if box:
        first = np.floor((centres[inside] - DIGIT_SIZE / 2) * scale).astype(int)
        last = np.floor((centres[inside] + DIGIT_SIZE / 2 - 1) * scale).astype(int)
        span = np.floor((DIGIT_SIZE - 1) * scale).astype(int) + 2
    else:
        first = last = (centres[inside] * scale).astype(int)
        span = np.ones(2, int)
    cells = np.full((width, span[0] * span[1]), _PAD, np.int64)
    for digit, (lo, hi) in enumerate(
        zip(np.maximum(first, 0), np.minimum(last, np.array(map_shape) - 1), strict=True)
    ):
        rows, cols = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        flat = (rows * map_shape[1] + cols).ravel()
        cells[digit, : len(flat)] = flat
    return cells


def cell_cross_entropy(cells, attention, off_target_weight: float = 1.0):
    """Cross-entropy of maps ``(B, S)`` to equal mass on each target ``(B, M, C)`` (its cells; -1: none).

    A target's mass is the sum over its cells, so the loss is indifferent to
    how a digit's mass is shared among the cells it touches. The loss splits
    into the cross-entropy among the targets (how evenly they share their
    mass) plus ``-log`` of their total mass (how much leaks off them);
    ``off_target_weight`` scales the second part. One-cell targets may come
    as ``(B, M)``: Keras drops a last axis of 1 from ``y_true``.
    """
    cells = _target_sets(cells)
    batch, targets, per_target = keras.ops.shape(cells)
    flat = keras.ops.reshape(keras.ops.maximum(cells, 0), (batch, targets * per_target))
    picked = keras.ops.reshape(
        keras.ops.take_along_axis(attention, flat, axis=-1), (batch, targets, per_target)
    )
    mass = keras.ops.sum(picked * keras.ops.cast(cells >= 0, attention.dtype), axis=-1)
    valid = keras.ops.cast(cells[..., 0] >= 0, attention.dtype)
    on_targets = keras.ops.sum(mass * valid, axis=-1, keepdims=True)
    among = -keras.ops.log(mass / (on_targets + 1e-12) + 1e-12) * valid
    among = keras.ops.sum(among, axis=-1) / keras.ops.maximum(keras.ops.sum(valid, axis=-1), 1.0)
    return among - off_target_weight * keras.ops.log(on_targets[:, 0] + 1e-12)


def target_loss(off_target_weight: float):
    """:func:`cell_cross_entropy` with ``off_target_weight``, as a Keras loss."""

    def cell_loss(cells, attention):
        return cell_cross_entropy(cells, attention, off_target_weight)

    return cell_loss


def top_cell_on_digit(cells, attention):
    """1 where the most attended cell is one of the target cells ``(B, M, C)``, per map."""
    top = keras.ops.cast(keras.ops.argmax(attention, axis=-1), "int32")[:, None, None]
    return keras.ops.cast(keras.ops.any(_target_sets(cells) == top, axis=(1, 2)), "float32")


def _target_sets(cells):
    cells = keras.ops.cast(cells, "int32")
    return cells[..., None] if len(cells.shape) == 2 else cells


def coarse_data(recipe: GigapixelRecipe, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Coarse views ``(n, h, w, 1)`` uint8 and their digit cells ``(n, 5)``: exact for
    ``coarse_exact_share`` of the canvases, the rest as served from JPEG tiles."""
    spec = dataclasses.replace(gigapixel_spec(recipe.coarse_side), n_noise=recipe.coarse_noise)
    layouts = [make_layout(spec, split, recipe.seed, i) for i in range(n)]
    rng = np.random.default_rng([recipe.seed, 1, SPLITS.index(split)])
    qualities = rng.integers(recipe.coarse_jpeg_min_quality, recipe.coarse_jpeg_max_quality + 1, size=n)
    exact = rng.random(n) < recipe.coarse_exact_share
    views = np.stack(
        [
            coarse_view(layout) if keep else stored_coarse_view(layout, int(quality))
            for layout, keep, quality in zip(layouts, exact, qualities, strict=True)
        ]
    )[..., None]
    box = recipe.coarse_box_targets
    return views, np.stack([digit_cells(layout, views.shape[1:3], box=box) for layout in layouts])


def fine_data(recipe: GigapixelRecipe, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Views ``(M, 256, 256, 1)`` of regions near each digit of ``n`` canvases, and their digit cells."""
    spec = gigapixel_spec(recipe.coarse_side)
    rng = np.random.default_rng([recipe.seed, 2, SPLITS.index(split)])
    view_shape = (REGION_SIZE // FINE_FACTOR, REGION_SIZE // FINE_FACTOR)
    views, cells = [], []
    for index in range(n):
        layout = make_layout(spec, split, recipe.seed + 1, index)
        for centre in layout.digit_centres:
            jitter = rng.uniform(-recipe.fine_jitter, recipe.fine_jitter, size=2)
            top, left = np.round(centre + jitter - REGION_SIZE / 2).astype(int)
            views.append(region_view(layout, top, left, (REGION_SIZE, REGION_SIZE), FINE_FACTOR))
            cells.append(digit_cells(shifted(layout, top, left, REGION_SIZE, REGION_SIZE), view_shape))
    return np.stack(views)[..., None], np.stack(cells)


class EmptyCells(keras.layers.Layer):
    """The logit ``(B, 1)`` of ``count`` empty cells as one: the logit of an empty view + log(count).

    The empty view is 9x9, so that its centre cell sees no padding through
    the three 3x3 layers: it is any cell far from every mark.
    """

    def __init__(self, logits: keras.Model, count: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.logits, self.count = logits, count

    def call(self, x):
        empty = keras.ops.zeros_like(x[:, :9, :9, :])
        return self.logits(empty)[:, 4, 4, :] + float(np.log(self.count))


def fit_model(logits: keras.Model, empty_cells: int = 0, name: str = "fit") -> keras.Model:
    """uint8 views -> the softmax ``(B, S)`` of ``logits`` over all cells, as a stage fits it.

    With ``empty_cells``, the softmax also holds that many cells of an empty
    view (a last column that no target names).
    """
    raw, x = one_level._uint8_input((None, None, 1), "view")
    flat = keras.layers.Flatten(name="cells")(logits(x))
    if empty_cells:
        flat = keras.layers.Concatenate(name="with_empty")([flat, EmptyCells(logits, empty_cells)(x)])
    return keras.Model(raw, keras.layers.Softmax(name="attention_map")(flat), name=name)


def _fit(
    run: RunDir,
    stage: str,
    logits: keras.Model,
    data: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    lr: float,
    epochs: int,
    recipe: GigapixelRecipe,
    verbose: int,
    empty_cells: int = 0,
    off_target_weight: float = 1.0,
) -> dict:
    """Fit one attention network's softmax to digit cells on uint8 views (see :func:`fit_model`)."""
    model = fit_model(logits, empty_cells, f"{stage}_fit")
    model.compile(keras.optimizers.Adam(lr), target_loss(off_target_weight), metrics=[top_cell_on_digit])
    history = model.fit(
        *data,
        batch_size=recipe.batch_size,
        epochs=epochs,
        validation_data=val,
        shuffle=True,
        verbose=verbose,
        callbacks=[*run.callbacks(stage), one_level._step_decay(lr, epochs)],
    )
    return one_level._last(history)


def train_coarse(run: RunDir, nets: TwoLevelNets, recipe: GigapixelRecipe, verbose: int) -> dict:
    """Stage 1: the coarse attention network on coarse views."""
    data = coarse_data(recipe, "train", recipe.coarse_canvases)
    val = coarse_data(recipe, "test", recipe.coarse_val_canvases)
    return _fit(
        run,
        "coarse",
        nets.coarse_attention,
        data,
        val,
        recipe.coarse_lr,
        recipe.coarse_epochs,
        recipe,
        verbose,
        empty_cells=(recipe.coarse_virtual_side // COARSE_FACTOR) ** 2,
        off_target_weight=recipe.coarse_off_target_weight,
    )


def train_fine(run: RunDir, nets: TwoLevelNets, recipe: GigapixelRecipe, verbose: int) -> dict:
    """Stage 2: the fine attention network on region views around digits."""
    data = fine_data(recipe, "train", recipe.fine_canvases)
    val = fine_data(recipe, "test", recipe.fine_val_canvases)
    return _fit(
        run, "fine", nets.fine_attention, data, val, recipe.fine_lr, recipe.fine_epochs, recipe, verbose
    )


TRAINERS = {"coarse": train_coarse, "fine": train_fine}
