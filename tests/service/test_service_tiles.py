"""``ats-serve --data-root`` turns tile references on in the real server process."""

from __future__ import annotations

import pytest

from ats_client import AtsClient
from tests.support import encode_image, random_image

pytestmark = pytest.mark.slow


def test_data_root_serves_tile_references(start_server, make_repository, tmp_path):
    root = tmp_path / "slides"
    root.mkdir()
    pixels = random_image(192, 256, seed=9)
    (root / "image.png").write_bytes(encode_image(pixels))
    server = start_server(make_repository(), "--data-root", str(root))
    with AtsClient(server.target, retries=0) as client:
        support = client.metadata().inputs
        assert list(support.source_kinds) == ["image", "tensor", "tile"]
        by_reference = client.predict_tile("image.png", seed=3)
        uploaded = client.predict(pixels, seed=3)
    assert list(by_reference.probabilities) == list(uploaded.probabilities)
    assert list(by_reference.patches) == list(uploaded.patches)
