"""The Open Inference Protocol over HTTP/REST, called with nothing but
urllib as curl users would: health, metadata, JSON bodies, the binary-data
extension, the protocol's JSON error bodies and the gRPC port's tokens."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest

from ats_client import AtsClient
from bench.common import ServerProcess
from tests.support import TINY_MODEL, encode_image, random_image

pytestmark = pytest.mark.slow

HEADER_LENGTH = "Inference-Header-Content-Length"


def fetch(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; error statuses are answers too."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_health_and_metadata(ats_server: ServerProcess) -> None:
    base = ats_server.http_url
    assert fetch(f"{base}/v2/health/live")[0] == 200
    assert fetch(f"{base}/v2/health/ready")[0] == 200
    assert fetch(f"{base}/v2/models/{TINY_MODEL}/ready")[0] == 200
    assert fetch(f"{base}/v2/models/{TINY_MODEL}/versions/1/ready")[0] == 200
    # a model or version the repository does not hold is NOT_FOUND, with the protocol's error body
    for path in (f"{TINY_MODEL}/versions/9", "no-such-model", "no-such-model/versions/1"):
        status, _, body = fetch(f"{base}/v2/models/{path}/ready")
        assert status == 404 and "error" in json.loads(body), path
    status, _, body = fetch(f"{base}/v2")
    assert status == 200 and json.loads(body)["name"] == "ats-serve"
    status, _, body = fetch(f"{base}/v2/models/{TINY_MODEL}/versions/1")
    found = json.loads(body)
    assert status == 200 and found["versions"] == ["1"]
    assert {"name": "pixels", "datatype": "UINT8", "shape": [-1, -1, -1]} in found["inputs"]


def test_json_pixels_give_the_ats_v1_answer(ats_server: ServerProcess) -> None:
    pixels = random_image(40, 50, seed=8)
    request = {
        "id": "r-1",
        "inputs": [
            {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.tolist()}
        ],
        "parameters": {"seed": 21, "n_patches": 2, "mode": "top_k"},
        "outputs": [{"name": "probabilities"}, {"name": "label"}, {"name": "patch_boxes"}],
    }
    status, headers, body = fetch(
        f"{ats_server.http_url}/v2/models/{TINY_MODEL}/infer",
        json.dumps(request).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["id"] == "r-1" and answer["model_version"] == "1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert list(outputs) == ["probabilities", "label", "patch_boxes"]
    with AtsClient(ats_server.target) as client:
        reference = client.predict(pixels, n_patches=2, seed=21, mode="top_k")
    assert outputs["probabilities"]["data"] == [p.probability for p in reference.probabilities]
    assert outputs["label"]["data"] == [reference.label]
    assert outputs["patch_boxes"]["shape"] == [2, 4]
    assert outputs["patch_boxes"]["data"] == [
        v for p in reference.patches for v in (p.y, p.x, p.height, p.width)
    ]


def test_binary_extension_image_in_and_outputs_out(ats_server: ServerProcess, tmp_path: pathlib.Path) -> None:
    png = encode_image(random_image(90, 110, seed=9))
    element = struct.pack("<I", len(png)) + png
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "parameters": {"seed": 4},
            "outputs": [
                {"name": "attention_map", "parameters": {"binary_data": True}},
                {"name": "label", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    status, headers, body = fetch(
        f"{ats_server.http_url}/v2/models/{TINY_MODEL}/versions/1/infer",
        header + element,
        {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, body[:300]
    length = int(headers[HEADER_LENGTH])
    answer = json.loads(body[:length])
    attention, label = answer["outputs"]
    size = attention["parameters"]["binary_data_size"]
    assert len(body) == length + size
    values = np.frombuffer(body[length:], "<f4").reshape(attention["shape"])
    with AtsClient(ats_server.target) as client:
        reference = client.predict(png, seed=4)
    assert values.ravel().tolist() == list(reference.attention.values)
    assert label["data"] == [reference.label] and "parameters" not in label


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (f"/v2/models/{TINY_MODEL}/infer", b"{not json", 400),
        (f"/v2/models/{TINY_MODEL}/infer", b'{"inputs": "image"}', 400),
        (f"/v2/models/{TINY_MODEL}/infer", b'{"inputs": [1]}', 400),
        (
            f"/v2/models/{TINY_MODEL}/infer",
            b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "data": {}}]}',
            400,
        ),
        (f"/v2/models/{TINY_MODEL}/infer", b'{"parameters": {"seed": 99999999999999999999999}}', 400),
        (
            f"/v2/models/{TINY_MODEL}/infer",
            b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1]}]}',
            400,
        ),
        (
            "/v2/models/no-such-model/infer",
            b'{"inputs": [{"name": "tile_path", "datatype": "BYTES", "shape": [1]}]}',
            404,
        ),
        (f"/v2/models/{TINY_MODEL}/versions/9", None, 404),
        ("/v2/models/no-such-model", None, 404),
    ],
)
def test_errors_are_the_protocols_json_bodies(
    ats_server: ServerProcess, path: str, body: bytes | None, status: int
) -> None:
    got, headers, answer = fetch(ats_server.http_url + path, body, {"Content-Type": "application/json"})
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    assert set(json.loads(answer)) == {"error"} and json.loads(answer)["error"]


def test_the_gRPC_ports_tokens_guard_the_http_port(
    start_server, make_repository, tmp_path: pathlib.Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a-good-token\n")
    os.chmod(tokens, 0o600)
    server = start_server(make_repository(), "--auth-tokens-file", str(tokens))
    metadata = f"{server.http_url}/v2/models/{TINY_MODEL}"
    assert fetch(f"{server.http_url}/v2/health/ready")[0] == 200  # health is an open group by default
    assert fetch(metadata)[0] == 401
    assert fetch(metadata, headers={"Authorization": "Bearer not-a-token"})[0] == 401
    assert fetch(metadata, headers={"Authorization": "Bearer a-good-token"})[0] == 200


def test_http_port_zero_turns_it_off(start_server, make_repository) -> None:
    server = start_server(make_repository(), "--http-port", "0")
    assert "OIP HTTP/REST on" not in server.log_path.read_text()
    # (the port picked for it may have gone to another test's server since: any failure will do)
    with pytest.raises((urllib.error.URLError, TimeoutError, ConnectionError)):
        urllib.request.urlopen(f"{server.http_url}/v2/health/live", timeout=10)
