"""Gigapixel digits: the canvas family; views rendered from layouts equal those of the rendered canvas."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from model_ops.data import InMemoryImage
from model_ops.datasets.gigapixel_digits import (
    COARSE_FACTOR,
    LayoutImage,
    coarse_view,
    gigapixel_spec,
    region_view,
    shifted,
)
from model_ops.datasets.megapixel_digits import NOISE, make_layout, render_canvas, render_region
from model_ops.lowres import low_resolution_view
from model_ops.two_level_export import tiny_two_level_metadata, tiny_two_level_networks
from model_ops.two_level_pipeline import run_two_level

SMALL = gigapixel_spec(3000)  # 3008 x 3008, the coarse view 47 x 47


@pytest.fixture(scope="module")
def small():
    layout = make_layout(SMALL, "train", 1, 2)
    return layout, render_canvas(layout)


def _cut(canvas: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """``canvas[top:top+size, left:left+size]`` with zeros outside."""
    out = np.zeros((size, size, canvas.shape[2]), canvas.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, canvas.shape[0]), min(left + size, canvas.shape[1])
    out[y0 - top : y1 - top, x0 - left : x1 - left] = canvas[y0:y1, x0:x1]
    return out


@pytest.mark.parametrize(
    ("side", "expected_side", "strokes"),
    [(10_000, 10_048, 50), (30_000, 30_016, 150), (100_000, 100_032, 500)],
)
def test_family_rounds_sides_to_the_coarse_factor(side, expected_side, strokes):
    spec = gigapixel_spec(side)
    assert (spec.height, spec.width, spec.n_noise) == (expected_side, expected_side, strokes)
    assert (spec.n_target, spec.n_other, spec.low_scale) == (3, 2, 1 / 64)
    assert spec.low_shape == (expected_side // COARSE_FACTOR,) * 2


def test_a_100k_canvas_is_mostly_empty_and_its_coarse_view_is_faint():
    layout = make_layout(gigapixel_spec(100_000), "test", 0, 0)
    assert len(layout.classes) == 505 and (layout.classes != NOISE).sum() == 5
    view = coarse_view(layout)
    assert view.shape == (1563, 1563)
    assert (view > 0).mean() < 1e-3 and view.max() < 40  # a digit is a faint mark of a few pixels


def test_coarse_view_is_the_area_downsample_of_the_canvas(small):
    layout, canvas = small
    expected = low_resolution_view(canvas, SMALL.low_shape).numpy()[..., 0]
    assert expected.max() > 0
    np.testing.assert_array_equal(coarse_view(layout), expected)
    np.testing.assert_array_equal(LayoutImage(layout).low_view(SMALL.low_shape)[..., 0], expected)


@pytest.mark.parametrize(("top", "left"), [(0, 0), (13, -77), (1001, 1503), (2900, 2950), (-2000, 500)])
def test_region_views_are_area_downsamples_of_the_cut_regions(small, top, left):
    layout, canvas = small
    expected = low_resolution_view(_cut(canvas, top, left, 2048), (256, 256)).numpy()
    np.testing.assert_array_equal(region_view(layout, top, left, (2048, 2048), 8), expected[..., 0])
    views = LayoutImage(layout).region_views(np.array([[top, left]]), (2048, 2048), (256, 256))
    np.testing.assert_array_equal(views[0], expected)


def test_views_of_regions_that_hold_objects_are_not_empty(small):
    layout, _ = small
    for y, x in zip(layout.ys[:5], layout.xs[:5], strict=True):
        assert region_view(layout, int(y) - 500, int(x) - 700, (2048, 2048), 8).max() > 0


def test_patches_are_cut_from_the_canvas(small):
    layout, canvas = small
    offsets = np.stack([layout.ys[:6] - 11, layout.xs[:6] + 3], axis=1)
    offsets = np.concatenate([offsets, [[-20, -20], [2990, 2990]]])
    patches = LayoutImage(layout).read_patches(offsets, (50, 50))
    for patch, (y, x) in zip(patches, offsets, strict=True):
        np.testing.assert_array_equal(patch[..., 0], _cut(canvas, int(y), int(x), 50)[..., 0])


def test_shifted_keeps_what_touches_the_box(small):
    layout, canvas = small
    box = shifted(layout, 700, 900, 600, 500)
    np.testing.assert_array_equal(render_region(box, 0, 0, 600, 500), canvas[700:1300, 900:1400, 0])
    assert len(box.classes) < len(layout.classes)


def test_inexact_views_are_refused(small):
    layout, _ = small
    with pytest.raises(ValueError, match="whole factor"):
        LayoutImage(layout).low_view((40, 40))
    with pytest.raises(ValueError, match="whole multiple"):
        LayoutImage(layout).region_views(np.zeros((1, 2), int), (2048, 2048), (300, 300))
    with pytest.raises(ValueError, match="blocks"):
        region_view(layout, 0, 0, (2050, 2048), 8)


def test_the_pipeline_reads_a_layout_as_it_reads_the_rendered_canvas():
    """Same coarse map, regions, fine maps, patches and prediction as the whole canvas in memory."""
    layout = make_layout(dataclasses.replace(gigapixel_spec(1024), n_noise=40), "test", 3, 0)
    metadata = tiny_two_level_metadata(
        low_scale=1 / 64, region_size=(128, 128), fine_scale=1 / 8, n_regions=4
    )
    stages = tiny_two_level_networks(metadata, seed=5)
    lazy = run_two_level(stages, LayoutImage(layout), metadata, mode="sample", seed=9)
    whole = run_two_level(stages, InMemoryImage(render_canvas(layout)), metadata, mode="sample", seed=9)
    for field in dataclasses.fields(lazy):
        np.testing.assert_allclose(
            tf.cast(getattr(lazy, field.name), tf.float64), tf.cast(getattr(whole, field.name), tf.float64)
        )
