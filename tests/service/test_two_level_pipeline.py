"""The two-level pipeline in process: region views from a pyramid level against
the level-0 cut, a cancellation check before every stage, and refusals of
more regions than the tissue has cells."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from service.errors import Cancelled, InvalidInput
from service.models.servable import load_servable
from service.pipeline import runner
from service.pipeline.payload import RawTensor, TileRef
from service.pipeline.sources import InMemorySource, SourceLimits, SourceRegistry
from service.pipeline.two_level import STAGES
from service.tiles import TileOpener, add_tile_source
from tests.service.dicom_slides import write_series
from tests.service.two_level_slides import glass_slide, texture, write_slide

LIMITS = SourceLimits(max_image_pixels=10**8, max_image_bytes=10**9)
REGION, VIEW = (64, 64), (16, 16)  # the tiny model's regions and their views (fine scale 1/4)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    from model_ops.two_level_export import export_tiny_two_level_model

    path = export_tiny_two_level_model(tmp_path_factory.mktemp("tiny") / "1", channels=1)
    return load_servable("tiny-two-level", 1, path)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, np.ndarray]:
    root = tmp_path_factory.mktemp("slides")
    pixels = texture(1024)
    write_slide(root / "texture.tif", pixels)
    return root, pixels


def test_region_views_from_the_fine_level_match_the_level0_cut(slide) -> None:
    root, pixels = slide
    opener = TileOpener(str(root), 32 << 20)
    rng = np.random.default_rng(0)
    aligned = rng.integers(-8, 256, (12, 2)) * 4  # on the level's grid, some past the borders
    shifted = aligned + rng.integers(1, 4, (12, 2))
    memory = InMemorySource(pixels)
    # on the grid a view equals the cut's but for rounding (the pyramid rounds each level);
    # off it the box moves by under a level pixel (noise pixels enter and leave its cells)
    for offsets, tolerance, mean in ((aligned, 1, 0.5), (shifted, 255, 12)):
        expected = memory.region_views(offsets, REGION, VIEW).numpy().astype(int)
        source = opener(TileRef("texture.tif"), 1, LIMITS)
        assert source.level_for_scale((0.25, 0.25)) == 2
        views = source.region_views(offsets, REGION, VIEW).numpy().astype(int)
        assert views.shape == (12, *VIEW, 1)
        assert np.abs(views - expected).max() <= tolerance
        assert np.abs(views - expected).mean() < mean
        assert source.read_stats.tiles_decoded <= 4 * len(offsets)  # level 2's tiles only


def test_every_stage_checks_that_the_caller_is_still_there(model) -> None:
    pixels = texture(768)
    payload = RawTensor(shape=pixels.shape, dtype="uint8", data=pixels.tobytes())
    sources = SourceRegistry(LIMITS)
    reached = []
    for allowed in range(20):
        checks = iter(range(allowed))  # the caller leaves after ``allowed`` checks
        try:
            runner.run(
                model, payload, runner.PredictOptions(seed=1), sources, lambda c=checks: next(c, -1) >= 0
            )
        except Cancelled as cancelled:
            reached.append(str(cancelled).rsplit(" ", 1)[-1])
        else:
            break
    assert reached == ["decode", *(stage for stage in STAGES if stage != "tissue")]


def test_more_regions_than_tissue_cells_is_refused(model) -> None:
    # tissue in a corner, 2x2 pixels of the 32x32 coarse view: a mask's opening keeps
    # what touches the border, so 4 coarse cells (fewer than the 8 regions allowed)
    pixels = glass_slide(2048, (0, 0, 128, 128))
    payload = RawTensor(shape=pixels.shape, dtype="uint8", data=pixels.tobytes())
    sources = SourceRegistry(LIMITS)
    one = runner.run(model, payload, runner.PredictOptions(seed=0, n_regions=1, tissue_mask="otsu"), sources)
    assert one.tissue_cells == np.count_nonzero(one.attention) == 4
    (cell,) = one.regions.cells.tolist()
    assert one.attention[tuple(cell)] > 0
    with pytest.raises(InvalidInput) as refused:
        runner.run(model, payload, runner.PredictOptions(seed=0, n_regions=8, tissue_mask="otsu"), sources)
    assert refused.value.field == "n_regions" and "tissue cells" in str(refused.value)


def test_a_dicom_series_by_reference_with_levels_by_pixel_size(model, tmp_path: pathlib.Path) -> None:
    write_series(tmp_path / "series", texture(1024), levels=4, tile=64, mpp=0.25, codec="jpeg")
    source = TileOpener(str(tmp_path), 8 << 20)(TileRef("series"), 1, LIMITS)
    assert source.format_name == "DICOM" and source.level_for_scale((0.25, 0.25)) == 2  # 1 um per pixel
    sources = SourceRegistry(LIMITS)
    add_tile_source(sources, str(tmp_path))
    prediction = runner.run(model, TileRef("series"), runner.PredictOptions(seed=3, n_regions=2), sources)
    assert prediction.image_shape == (1024, 1024, 1) and prediction.regions.fine_attention.shape == (2, *VIEW)
    assert len(prediction.offsets) == 2 * model.spec.n_patches


@pytest.mark.parametrize("mode", ["sample", "top_k"])
def test_uploaded_pixels_predict_as_the_model_ops_pipeline(model, mode: str) -> None:
    from model_ops.data import InMemoryImage
    from model_ops.two_level_pipeline import SavedModelStages, run_two_level

    pixels = texture(1280, seed=5)
    payload = RawTensor(shape=pixels.shape, dtype="uint8", data=pixels.tobytes())
    served = runner.run(model, payload, runner.PredictOptions(seed=11, mode=mode), SourceRegistry(LIMITS))
    reference = run_two_level(
        SavedModelStages(model.saved_model), InMemoryImage(pixels), model.spec, mode=mode, seed=11
    )
    np.testing.assert_array_equal(served.regions.offsets, reference.region_offsets.numpy()[0])
    np.testing.assert_array_equal(served.offsets, reference.patch_offsets.numpy().reshape(-1, 2))
    np.testing.assert_allclose(served.probabilities, reference.probabilities.numpy()[0], rtol=1e-5)
