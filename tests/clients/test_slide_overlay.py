"""Slide overlays drawn from a response alone: the coarse view it carries,
enlarged, with the coarse heat map and the region and patch boxes scaled
from full-resolution pixels."""

from __future__ import annotations

import numpy as np
import pytest

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_client.overlay import PATCH_COLOUR, REGION_COLOUR, render_slide_overlay

HEIGHT, WIDTH = 10_000, 20_000  # the slide, full resolution
VIEW = (10, 20)  # its coarse view: 1000 full-resolution pixels a view pixel


def two_level_response() -> pb.PredictResponse:
    values = np.zeros(VIEW, np.float32)
    values[2, 15] = 1.0  # all attention on one cell
    response = pb.PredictResponse(
        label="7",
        probabilities=[pb.ClassProbability(name="7", probability=0.9)],
        image_height=HEIGHT,
        image_width=WIDTH,
        attention=pb.AttentionMap(
            height=VIEW[0], width=VIEW[1], values=values.ravel().tolist(), cell_height=1000, cell_width=1000
        ),
    )
    view = np.full((*VIEW, 1), 200, np.uint8)
    response.two_level.coarse_view.CopyFrom(pb.Tensor(shape=view.shape, dtype=pb.UINT8, data=view.tobytes()))
    response.two_level.regions.append(pb.Region(x=14_000, y=1_000, width=3_000, height=3_000))
    response.patches.append(pb.Patch(x=15_000, y=2_000, width=500, height=500, region=0))
    return response


def test_slide_overlay_scales_boxes_and_heat_to_the_enlarged_view() -> None:
    picture = np.asarray(render_slide_overlay(two_level_response()).convert("RGB")).astype(int)
    zoom = 26  # ceil(512 / 20): the 20 px wide view is enlarged to at least 512
    assert picture.shape == (VIEW[0] * zoom, VIEW[1] * zoom, 3)
    scale = zoom / 1000  # picture pixels per full-resolution pixel
    region_top, region_left = round(1_000 * scale), round(14_000 * scale)
    assert tuple(picture[region_top, region_left + 30]) == REGION_COLOUR  # its top edge
    assert tuple(picture[round(2_000 * scale), round(15_000 * scale) + 5]) == PATCH_COLOUR
    hot = picture[2 * zoom + zoom // 2, 15 * zoom + zoom // 2]  # inside the attended cell
    cold = picture[8 * zoom, 2 * zoom]
    assert hot[0] > hot[1] + 60 and tuple(cold) == (200, 200, 200)


def test_a_response_without_a_coarse_view_is_refused() -> None:
    response = two_level_response()
    response.two_level.ClearField("coarse_view")
    with pytest.raises(ValueError, match="no coarse view"):
        render_slide_overlay(response)
