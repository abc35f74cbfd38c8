"""Tile references end to end: a real gRPC server (the ats-serve Server, in
this process, on loopback) and the real client. A slide referenced by path
and the same pixels uploaded give the same prediction for the same seed."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ats_client import AtsClient, AtsError
from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from model_ops.datasets.writers import write_png, write_tiff
from service.config import Config
from tests.support import TINY_MODEL, free_port, metric, scrape

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path):
    """(client, data root, metrics URL, canvas) of a server with tile references on."""
    from service.server.app import Server

    repository = tmp_path_factory.mktemp("repo")
    shutil.copytree(tiny_model_dir, repository / TINY_MODEL / "1")
    root = tmp_path_factory.mktemp("slides")
    layout = make_layout(CanvasSpec(height=1600, width=1600), "test", 11, 0)
    write_tiff(layout, root / "canvas.tif")
    write_png(layout, root / "canvas.png")
    (root / "notes.txt").write_text("not an image")
    config = Config(
        model_repository=str(repository),
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
        http_port=0,  # the REST front end is not under test here
        poll_interval=0,
        drain_delay=0,
        grace_period=5,
        data_root=str(root),
        # the lossless level of the view's own size gives the upload's view bit
        # for bit; a finer one averaged down differs by float rounding
        view_oversample=1,
    )
    server = Server(config, CollectorRegistry())  # enables tile sources from config.data_root
    server.start()
    try:
        with AtsClient(f"127.0.0.1:{server.port}", retries=0, timeout=60) as client:
            for _ in range(600):
                if client.health() == "SERVING":
                    break
                time.sleep(0.2)
            yield client, root, f"http://127.0.0.1:{config.metrics_port}/metrics", render_canvas(layout)
    finally:
        server.drain()


def test_metadata_lists_tile_sources(served) -> None:
    client, *_ = served
    inputs = client.metadata().inputs
    assert "tile" in inputs.source_kinds
    assert {"TIFF", "BIGTIFF", "OME-TIFF", "SVS", "PNG", "JPEG"} <= set(inputs.tile_formats)


@pytest.mark.parametrize("path", ["canvas.tif", "canvas.png"])
def test_tile_reference_predicts_as_the_uploaded_pixels(served, path: str) -> None:
    client, _, _, canvas = served
    channels = client.metadata().channels
    pixels = np.repeat(canvas, channels, axis=-1)
    for seed in (1, 2):
        uploaded = client.predict(pixels, seed=seed, n_patches=6)
        referenced = client.predict_tile(path, seed=seed, n_patches=6)
        assert (referenced.image_height, referenced.image_width) == (1600, 1600)
        assert [(p.y, p.x) for p in referenced.patches] == [(p.y, p.x) for p in uploaded.patches]
        np.testing.assert_allclose(
            [p.probability for p in referenced.probabilities],
            [p.probability for p in uploaded.probabilities],
            rtol=1e-6,
        )
        np.testing.assert_array_equal(referenced.attention.values, uploaded.attention.values)


def test_refusals_carry_their_status_codes(served) -> None:
    client, *_ = served
    cases = {
        ("../outside.tif", None): "PERMISSION_DENIED",
        ("/etc/hostname", None): "PERMISSION_DENIED",
        ("missing.tif", None): "NOT_FOUND",
        ("notes.txt", None): "INVALID_ARGUMENT",
        ("canvas.tif", 9): "INVALID_ARGUMENT",
        ("https://example.org/a.svs", None): "UNIMPLEMENTED",
    }
    for (path, level), code in cases.items():
        with pytest.raises(AtsError) as info:
            client.predict_tile(path, level=level)
        assert info.value.code.name == code, path
        assert info.value.fields, path  # the offending field is named


def test_tile_reads_reach_the_prometheus_counters(served) -> None:
    client, *_, metrics_url, _ = served
    client.predict_tile("canvas.tif", level=0, seed=3)
    samples = scrape(metrics_url)
    assert metric(samples, "ats_tile_bytes_read_total") > 0
    assert metric(samples, "ats_tiles_decoded_total") > 0
    assert metric(samples, "ats_tile_cache_misses_total") > 0


def test_cli_predicts_a_tile_reference(served) -> None:
    client, *_ = served
    target = client.target
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ats_client.cli",
            "predict",
            "canvas.tif",
            "--tile",
            "--seed",
            "3",
            "--n-patches",
            "6",
            "--server",
            target,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = client.predict_tile("canvas.tif", seed=3, n_patches=6)
    assert f'"label": "{expected.label}"' in done.stdout
    assert '"image_height": 1600' in done.stdout
