"""Pretraining supervision, recipe scaling, the stage metric, the run folder's resume, and the pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model_ops.datasets.digits import DIGIT_SIZE
from model_ops.datasets.megapixel_digits import NOISE, CanvasSpec, make_layout, render_canvas
from model_ops.training import curriculum
from model_ops.training.plots import _ticks, plot_attention, plot_curves, read_log
from model_ops.training.recipe import Recipe, top_cell_on_digit

SPEC = CanvasSpec()


def test_crops_without_jitter_hold_their_object():
    crops, labels = curriculum.feature_crops(SPEC, "train", 5, 3, jitter=0.0)
    assert crops.shape == (3 * 12, 50, 50, 1) and crops.dtype == np.uint8
    assert np.bincount(labels, minlength=11)[curriculum.NOT_A_DIGIT] == 3 * 7
    start = (50 - DIGIT_SIZE) // 2
    for canvas in range(3):
        layout = make_layout(SPEC, "train", 5, canvas)
        digits = np.flatnonzero(layout.classes != NOISE)
        for k, i in enumerate(digits):
            crop = crops[canvas * 12 + k, ..., 0]
            assert labels[canvas * 12 + k] == layout.classes[i]
            np.testing.assert_array_equal(
                crop[start : start + DIGIT_SIZE, start : start + DIGIT_SIZE], layout.sprites[i]
            )


def test_crops_are_deterministic_and_jittered():
    a, _ = curriculum.feature_crops(SPEC, "test", 1, 2)
    b, _ = curriculum.feature_crops(SPEC, "test", 1, 2)
    c, _ = curriculum.feature_crops(SPEC, "test", 1, 2, jitter=0.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_attention_targets_cover_the_digits():
    layouts = [make_layout(SPEC, "train", 0, i) for i in range(8)]
    targets = curriculum.attention_targets(layouts, SPEC.low_shape, radius=1)
    assert targets.shape == (8, 180, 180)
    np.testing.assert_allclose(targets.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    cell = 1500 / 180
    for layout, target in zip(layouts, targets, strict=True):
        rows, cols = np.nonzero(target)
        assert len(rows) <= 5 * 9
        centres = np.stack([(rows + 0.5) * cell, (cols + 0.5) * cell], axis=1)
        digits = layout.digit_centres
        nearest = np.abs(centres[:, None, :] - digits[None]).max(axis=2).min(axis=1)
        assert nearest.max() <= 1.5 * cell + 0.5  # every marked cell is within one cell of a digit's centre


def test_low_views_are_the_lowres_function():
    from model_ops.lowres import low_resolution_view

    layouts = [make_layout(SPEC, "test", 0, i) for i in range(3)]
    views = curriculum.low_views(layouts, SPEC.low_shape, chunk=2)
    assert views.shape == (3, 180, 180, 1) and views.dtype == np.uint8
    for layout, view in zip(layouts, views, strict=True):
        np.testing.assert_array_equal(
            view, np.asarray(low_resolution_view(render_canvas(layout), (180, 180)))
        )


def test_top_cell_metric():
    target = np.zeros((2, 6), np.float32)
    target[0, 1] = target[1, 4] = 1.0
    attention = np.array([[0.1, 0.5, 0.1, 0.1, 0.1, 0.1], [0.6, 0.0, 0.0, 0.0, 0.4, 0.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(top_cell_on_digit(target, attention)), [1.0, 0.0])


def test_recipe_scaling():
    small = Recipe().scaled(0.01)
    assert small.feature_canvases == 20 and small.feature_epochs == 1 and small.finetune_epochs == 1
    assert small.feature_lr == Recipe().feature_lr and small.n_patches == 10


def test_ticks_are_round_and_inside():
    ticks = _ticks(0.013, 0.87)
    assert ticks == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert _ticks(1, 30)[0] >= 1 and _ticks(1, 30)[-1] <= 30


def test_curves_and_attention_pictures(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.5,2.0,0.4,2.2\n1,0.8,1.0,0.7,1.2\n")
    assert read_log(log)["val_loss"] == [2.2, 1.2]
    plot_curves(log, tmp_path / "curves.png", "stage")
    assert Image.open(tmp_path / "curves.png").size == (2 * 520, 340)
    canvas = render_canvas(make_layout(SPEC, "test", 0, 0))
    attention = np.random.default_rng(0).random((180, 180))
    plot_attention(
        [canvas, canvas],
        [attention, attention],
        [np.array([[100, 200]])] * 2,
        (50, 50),
        ["a", "b"],
        tmp_path / "attention.png",
        side=300,
    )
    picture = np.asarray(Image.open(tmp_path / "attention.png"))
    assert picture.shape == (2 * 320, 610, 3)
    assert (picture[..., 1] == 255).any() and (picture[..., 0] == 0).any()  # green boxes drawn
