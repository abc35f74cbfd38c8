"""What the gigapixel recipe fits its attention maps to: digit cells, the target loss, the empty cells."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from model_ops.datasets.megapixel_digits import NOISE, Layout
from model_ops.training import gigapixel


def _layout(tops_lefts: list[tuple[int, int]], side: int = 1024, noise: int = 0) -> Layout:
    n = len(tops_lefts)
    ys, xs = (np.array(v, np.int64) for v in zip(*tops_lefts, strict=True))
    classes = np.array([1] * (n - noise) + [NOISE] * noise, np.int64)
    return Layout(side, side, 1, ys, xs, classes, np.zeros((n, 28, 28), np.uint8))


def test_a_digit_is_its_centre_cell_or_every_cell_its_box_touches():
    # 1024 px on a 16x16 map: 64-px cells. Digit 0 sits inside cell (2, 3); digit 1
    # straddles rows 4-5 and columns 7-8; digit 2 straddles columns 0-1 only.
    layout = _layout([(130, 200), (300, 500), (650, 50), (900, 900)], noise=1)
    centre = gigapixel.digit_cells(layout, (16, 16))
    assert centre.tolist() == [[2 * 16 + 3], [4 * 16 + 8], [10 * 16 + 1], [-1], [-1]]
    box = gigapixel.digit_cells(layout, (16, 16), box=True)
    assert box.shape == (5, 4)
    assert box[0].tolist() == [2 * 16 + 3, -1, -1, -1]
    assert sorted(box[1].tolist()) == sorted([4 * 16 + 7, 4 * 16 + 8, 5 * 16 + 7, 5 * 16 + 8])
    assert box[2].tolist() == [10 * 16 + 0, 10 * 16 + 1, -1, -1]
    assert (box[3:] == -1).all()


def test_box_cells_stay_on_the_map():
    # A digit cut by the canvas's edge (as in a region's shifted layout): no cell off the map.
    layout = _layout([(-10, -10), (1020, 1020)], side=1030)
    cells = gigapixel.digit_cells(layout, (16, 16), box=True)
    assert cells[0].tolist() == [0, -1, -1, -1]
    assert (cells[1] == -1).all()  # its centre is off the canvas


def _maps(rng: np.random.Generator, batch: int, cells: int) -> np.ndarray:
    logits = rng.normal(size=(batch, cells)) * 2
    return (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("weight", [1.0, 0.25, 0.0])
def test_target_loss_is_evenness_among_targets_plus_weighted_leak(weight):
    rng = np.random.default_rng(0)
    attention = _maps(rng, 3, 20)
    cells = np.array(
        [
            [[0, 1], [5, -1], [-1, -1]],
            [[7, 8], [9, 10], [11, -1]],
            [[19, -1], [-1, -1], [-1, -1]],
        ]
    )
    got = np.asarray(gigapixel.cell_cross_entropy(cells, attention, weight))
    for row in range(3):
        sets = [[c for c in target if c >= 0] for target in cells[row] if target[0] >= 0]
        mass = np.array([attention[row, s].sum() for s in sets])
        among = -np.log(mass / mass.sum()).mean()
        np.testing.assert_allclose(got[row], among - weight * np.log(mass.sum()), rtol=1e-5)
    if weight == 1.0:  # the plain cross-entropy to equal mass on each target
        plain = [
            -np.mean([np.log(attention[r, [c for c in t if c >= 0]].sum()) for t in cells[r] if t[0] >= 0])
            for r in range(3)
        ]
        np.testing.assert_allclose(got, plain, rtol=1e-5)


def test_target_loss_ignores_how_a_target_shares_its_cells():
    even = np.array([[0.1, 0.1, 0.2, 0.6]], np.float32)
    lopsided = np.array([[0.19, 0.01, 0.2, 0.6]], np.float32)
    cells = np.array([[[0, 1], [2, -1]]])
    assert np.allclose(
        gigapixel.cell_cross_entropy(cells, even), gigapixel.cell_cross_entropy(cells, lopsided)
    )
    assert not np.allclose(
        gigapixel.cell_cross_entropy(cells[:, :, :1], even),
        gigapixel.cell_cross_entropy(cells[:, :, :1], lopsided),
    )


def test_one_cell_targets_may_lose_their_last_axis():
    attention = _maps(np.random.default_rng(1), 2, 9)
    cells = np.array([[[3], [4]], [[8], [-1]]])
    np.testing.assert_allclose(
        gigapixel.cell_cross_entropy(cells[..., 0], attention), gigapixel.cell_cross_entropy(cells, attention)
    )
    np.testing.assert_array_equal(
        gigapixel.top_cell_on_digit(cells[..., 0], attention), gigapixel.top_cell_on_digit(cells, attention)
    )


def test_the_fit_softmax_counts_the_empty_cells():
    logits = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(1, 3, padding="same")])
    model = gigapixel.fit_model(logits, empty_cells=1000)
    views = np.random.default_rng(2).integers(0, 255, size=(2, 12, 12, 1)).astype(np.uint8)
    out = np.asarray(model(views))
    assert out.shape == (2, 12 * 12 + 1)
    z = np.asarray(logits(views.astype(np.float32) / 255)).reshape(2, -1)
    z_empty = float(np.asarray(logits(np.zeros((1, 9, 9, 1), np.float32)))[0, 4, 4, 0])
    weights = np.concatenate([np.exp(z), np.full((2, 1), 1000 * np.exp(z_empty))], axis=1)
    np.testing.assert_allclose(out, weights / weights.sum(1, keepdims=True), rtol=1e-4)
    assert np.asarray(gigapixel.fit_model(logits)(views)).shape == (2, 12 * 12)


def test_the_coarse_stage_fits_box_targets_with_the_virtual_canvas_and_its_leak_weight(monkeypatch):
    recipe = dataclasses.replace(
        gigapixel.GigapixelRecipe().scaled(0.01), coarse_virtual_side=64 * 1000, coarse_off_target_weight=0.3
    )
    seen = {}

    def fake_fit(run, stage, logits, data, val, lr, epochs, recipe, verbose, **kwargs):
        seen.update(kwargs, stage=stage, cells=data[1])
        return {}

    monkeypatch.setattr(gigapixel, "_fit", fake_fit)
    gigapixel.train_coarse(None, gigapixel.TwoLevelNets(*[None] * 4), recipe, 0)
    assert seen["stage"] == "coarse"
    assert seen["empty_cells"] == 1000 * 1000 and seen["off_target_weight"] == 0.3
    assert seen["cells"].shape[1:] == (5, 4)


def test_coarse_views_are_exact_or_as_served_from_jpeg_tiles_in_the_recipe_share():
    recipe = dataclasses.replace(
        gigapixel.GigapixelRecipe(), coarse_side=4096, coarse_noise=20, coarse_exact_share=0.25
    )
    exact_only = dataclasses.replace(recipe, coarse_exact_share=1.0)
    views, cells = gigapixel.coarse_data(exact_only, "train", 40)
    layouts = [gigapixel.make_layout(_spec(recipe), "train", recipe.seed, i) for i in range(40)]
    exact = np.stack([gigapixel.coarse_view(layout) for layout in layouts])[..., None]
    assert np.array_equal(views, exact)
    mixed, mixed_cells = gigapixel.coarse_data(recipe, "train", 40)
    assert np.array_equal(mixed_cells, cells)  # the same canvases, only their views differ
    same = [np.array_equal(a, b) for a, b in zip(mixed, exact, strict=True)]
    # each canvas is exact with probability 1/4 (a JPEG view of a canvas with marks
    # never equals the exact one): outside 2 to 19 of 40 with probability < 1e-3
    assert 2 <= sum(same) <= 19
    jpeg = mixed[[not s for s in same]].astype(int) - exact[[not s for s in same]]
    assert 0 < np.abs(jpeg).max() <= 16  # JPEG error, not another picture


def _spec(recipe):
    return dataclasses.replace(gigapixel.gigapixel_spec(recipe.coarse_side), n_noise=recipe.coarse_noise)
