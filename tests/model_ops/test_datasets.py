"""Megapixel-digits generator: protocol, determinism, split hygiene, exact rendering."""

from __future__ import annotations

import numpy as np
import pytest

from model_ops.datasets.digits import DIGIT_SIZE, load_digit_sprites
from model_ops.datasets.megapixel_digits import (
    NOISE,
    CanvasSpec,
    level_shape,
    make_layout,
    render_canvas,
    render_region,
)

SPEC = CanvasSpec()


def _block_mean(canvas: np.ndarray, factor: int) -> np.ndarray:
    """Reference area mean over factor x factor blocks, partial edge blocks averaged over their pixels."""
    h, w = level_shape(*canvas.shape, factor)
    padded = np.zeros((h * factor, w * factor))
    valid = np.zeros_like(padded)
    padded[: canvas.shape[0], : canvas.shape[1]] = canvas
    valid[: canvas.shape[0], : canvas.shape[1]] = 1
    sums = padded.reshape(h, factor, w, factor).sum(axis=(1, 3))
    counts = valid.reshape(h, factor, w, factor).sum(axis=(1, 3))
    return np.floor(sums / counts + 0.5).astype(np.uint8)


@pytest.mark.parametrize("index", range(20))
def test_layout_follows_protocol(index):
    layout = make_layout(SPEC, "train", seed=3, index=index)
    digits = layout.classes[layout.classes != NOISE]
    assert len(layout.classes) == 55 and len(digits) == 5
    assert (layout.classes == NOISE).sum() == 50
    counts = np.bincount(digits, minlength=10)
    assert counts[layout.label] == 3 and counts.max() == 3 and (counts == 3).sum() == 1
    assert layout.ys.min() >= 0 and layout.ys.max() <= 1500 - DIGIT_SIZE
    assert layout.xs.min() >= 0 and layout.xs.max() <= 1500 - DIGIT_SIZE
    dy = np.abs(layout.ys[:, None] - layout.ys[None, :])
    dx = np.abs(layout.xs[:, None] - layout.xs[None, :])
    close = (dy < DIGIT_SIZE) & (dx < DIGIT_SIZE)
    assert close.sum() == len(layout.classes)  # only each object with itself


def test_labels_cover_all_classes():
    labels = [make_layout(SPEC, "test", 0, i).label for i in range(300)]
    assert set(labels) == set(range(10))


def test_layouts_are_deterministic_and_distinct():
    a, b = make_layout(SPEC, "train", 7, 11), make_layout(SPEC, "train", 7, 11)
    assert np.array_equal(render_canvas(a), render_canvas(b))
    for other in (
        make_layout(SPEC, "train", 7, 12),
        make_layout(SPEC, "train", 8, 11),
        make_layout(SPEC, "test", 7, 11),
    ):
        assert not np.array_equal(render_canvas(a), render_canvas(other))


def test_train_and_test_digits_are_disjoint_instances():
    train, train_labels = load_digit_sprites("train")
    test, test_labels = load_digit_sprites("test")
    assert len(train) + len(test) == 1797
    assert set(np.unique(train_labels)) == set(np.unique(test_labels)) == set(range(10))
    train_keys = {s.tobytes() for s in train}
    test_keys = {s.tobytes() for s in test}
    assert not train_keys & test_keys
    for index in range(10):
        layout = make_layout(SPEC, "test", 0, index)
        used = {s.tobytes() for s, c in zip(layout.sprites, layout.classes, strict=True) if c != NOISE}
        assert used <= test_keys


def test_canvas_pixels_are_the_sprites():
    layout = make_layout(SPEC, "train", 1, 0)
    canvas = render_canvas(layout)
    assert canvas.shape == (1500, 1500, 1) and canvas.dtype == np.uint8
    for y, x, sprite in zip(layout.ys, layout.xs, layout.sprites, strict=True):
        assert np.array_equal(canvas[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE, 0], sprite)
    mask = np.zeros((1500, 1500), bool)
    for y, x in zip(layout.ys, layout.xs, strict=True):
        mask[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE] = True
    assert not canvas[~mask].any()


def test_regions_are_slices_of_the_canvas_and_zero_outside():
    layout = make_layout(SPEC, "train", 2, 5)
    canvas = render_canvas(layout)[..., 0]
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left = rng.integers(-100, 1600, size=2)
        h, w = rng.integers(1, 300, size=2)
        padded = np.zeros((1900, 1900), np.uint8)
        padded[200:1700, 200:1700] = canvas
        expected = padded[top + 200 : top + 200 + h, left + 200 : left + 200 + w]
        region = render_region(layout, int(top), int(left), int(h), int(w))
        assert np.array_equal(region[: expected.shape[0], : expected.shape[1]], expected)
        assert not region[expected.shape[0] :].any() and not region[:, expected.shape[1] :].any()


@pytest.mark.parametrize("factor", [2, 3, 8, 37, 2048])
def test_downsampled_levels_are_exact_area_means(factor):
    spec = CanvasSpec(height=1111, width=777, n_noise=30)
    layout = make_layout(spec, "train", 4, 0)
    canvas = render_canvas(layout)[..., 0]
    shape = level_shape(1111, 777, factor)
    assert np.array_equal(render_region(layout, 0, 0, *shape, factor=factor), _block_mean(canvas, factor))
