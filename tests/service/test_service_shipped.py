"""``ats-serve`` with no repository flag serves the shipped model, and it reads
Megapixel-digits canvases sent through the real client."""

from __future__ import annotations

import pytest

from ats_client import AtsClient
from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from tests.support import encode_image

pytestmark = pytest.mark.slow
CANVASES = 30


def test_default_repository_serves_the_shipped_model(start_server):
    from service.config import default_model_repository

    repository = default_model_repository()
    assert (repository / "megapixel-digits" / "1" / "saved_model.pb").is_file()
    server = start_server(None, wait=False)  # no --model-repository: the default applies
    server.wait_serving(("megapixel-digits", "gigapixel-digits"))  # the shipped repository holds both
    correct = 0
    with AtsClient(server.target) as client:
        meta = client.metadata()
        assert meta.name == "megapixel-digits" and list(meta.patch_size) == [50, 50]
        for index in range(CANVASES):
            layout = make_layout(CanvasSpec(), "test", seed=2024, index=index)
            png = encode_image(render_canvas(layout)[..., 0])
            response = client.predict(png, mode="top_k")
            assert (response.image_height, response.image_width) == (1500, 1500)
            correct += response.label == str(layout.label)
    # Deterministic (fixed canvases, top-k): the model's ~93% test accuracy makes
    # fewer than 21 of 30 a regression, not chance (P < 1e-4 at 93%).
    assert correct >= 21, f"{correct}/{CANVASES} canvases read correctly"
