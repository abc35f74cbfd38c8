"""The client library and the ``ats-client`` CLI against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from ats_client import AtsClient, AtsError
from tests.support import random_image


def cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ats_client.cli", *args, "--server", server.target],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, ats_server):
    pixels = np.zeros((200, 240, 3), np.uint8)
    pixels[60:100, 150:190] = 255  # one bright square: something to attend to
    path = tmp_path_factory.mktemp("cli") / "image.png"
    Image.fromarray(pixels).save(path)
    return path


def test_predict_prints_json_and_writes_an_overlay(ats_server, image_file, tmp_path):
    overlay = tmp_path / "overlay.png"
    done = cli(
        ats_server,
        "predict",
        str(image_file),
        "--overlay",
        str(overlay),
        "--json",
        "--seed",
        "4",
        "--n-patches",
        "3",
    )
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["model_name"] == "tiny" and len(response["patches"]) == 3
    assert response["label"] == response["probabilities"][response.get("class_index", 0)]["name"]
    picture = np.asarray(Image.open(overlay).convert("RGB")).astype(int)
    original = np.asarray(Image.open(image_file).convert("RGB")).astype(int)
    assert picture.shape == original.shape
    for patch in response["patches"]:
        x, y = patch.get("x", 0), patch.get("y", 0)
        right, bottom = x + patch["width"] - 1, y + patch["height"] - 1
        inside = [
            (py, px)
            for py, px in ((y, x), (bottom, right), (y, right), (bottom, x))
            if 0 <= py < 200 and 0 <= px < 240
        ]
        assert all(tuple(picture[p]) == (0, 255, 0) for p in inside)  # the box's corners
    att = response["attention"]
    values = np.array(att["values"]).reshape(att["height"], att["width"])
    cy, cx = np.unravel_index(values.argmax(), values.shape)
    py = int((cy + 0.5) * att["cell_height"])
    px = int((cx + 0.5) * att["cell_width"])
    redder = picture[py, px, 0] - picture[py, px, 2] - (original[py, px, 0] - original[py, px, 2])
    assert redder > 100  # the heat map is red where attention peaks


def test_predict_prints_a_summary(ats_server, image_file):
    done = cli(ats_server, "predict", str(image_file), "--mode", "top_k")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("model tiny v1: ")
    assert "patches (x, y, width, height, attention) of 240x200:" in done.stdout
    assert "timings: decode" in done.stdout


def test_models_and_health(ats_server):
    models = cli(ats_server, "models")
    assert models.returncode == 0 and "tiny (default): 10 classes" in models.stdout
    assert "version 1: READY" in models.stdout
    listing = json.loads(cli(ats_server, "models", "--json").stdout)
    assert listing["default_model"] == "tiny"
    health = cli(ats_server, "health")
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")
    assert cli(ats_server, "health", "--service", "tiny").returncode == 0
    assert cli(ats_server, "health", "--service", "unknown").returncode == 2


def test_console_script_is_installed(ats_server):
    script = shutil.which("ats-client")
    assert script, "ats-client is not on PATH: install the project (pip install -e .)"
    done = subprocess.run(
        [script, "health", "--server", ats_server.target], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING")


def test_errors_name_the_field(ats_server, image_file):
    done = cli(ats_server, "predict", str(image_file), "--model", "nope")
    assert done.returncode == 2
    assert "NOT_FOUND" in done.stderr and "field model_name:" in done.stderr


def test_missing_image_file_is_reported_without_a_traceback(ats_server, tmp_path):
    missing = tmp_path / "no-such.png"
    done = cli(ats_server, "predict", str(missing))
    assert done.returncode == 2
    assert f"No such file or directory: {missing}" in done.stderr
    assert "Traceback" not in done.stderr


def test_deadline(ats_server):
    pixels = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), np.uint8)
    with AtsClient(ats_server.target, retries=0) as client, pytest.raises(AtsError) as caught:
        client.predict(pixels, timeout=0.001)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.slow
def test_retries_while_the_server_starts(start_server, make_repository):
    server = start_server(make_repository(), wait=False)
    pixels = random_image(64, 64)
    with AtsClient(server.target, retries=0) as impatient, pytest.raises(AtsError) as caught:
        impatient.predict(pixels)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    with AtsClient(server.target, retries=9, backoff=0.5) as patient:
        assert patient.predict(pixels).model_name == "tiny"
