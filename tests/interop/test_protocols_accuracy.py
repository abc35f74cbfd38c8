"""Held-out accuracy through every protocol: fresh Megapixel-digits canvases
(test-split digits, a seed no other test renders) sent with the same
sampling seed through ats.v1, OIP gRPC (stock tritonclient), OIP HTTP
(urllib) and TF Serving Predict to the shipped model. Each protocol must
return exactly ats.v1's probabilities, label and patch boxes for each
canvas, so they provably run the same model the same way, and the shipped
model must read them as well as test_service_shipped asks."""

from __future__ import annotations

import json
import pathlib
import shutil
import struct
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ats_client import AtsClient
from bench.common import ServerProcess
from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from model_ops.export import latest_version
from service.config import default_model_repository
from tests.interop.conftest import TritonVenv
from tests.support import encode_image

pytestmark = pytest.mark.slow

MODEL = "megapixel-digits"
CANVASES = 20
LAYOUT_SEED = 7031  # fresh: no other test renders these canvases
# Sampling (10 patches, the model's default): the shipped versions read 93-94 %
# of test canvases; under 15 of 20 would be a regression (P < 0.01 at 93 %).
MIN_CORRECT = 15


@pytest.fixture(scope="module")
def canvases(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, list[int]]:
    """``<seed>.png`` for each canvas (its index is its sampling seed), and the labels."""
    folder = tmp_path_factory.mktemp("canvases")
    labels = []
    for index in range(CANVASES):
        layout = make_layout(CanvasSpec(), "test", seed=LAYOUT_SEED, index=index)
        (folder / f"{index}.png").write_bytes(encode_image(render_canvas(layout)[..., 0]))
        labels.append(layout.label)
    return folder, labels


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    """The shipped model's newest version alone (one load, one warm-up)."""
    source = default_model_repository() / MODEL
    newest = latest_version(source)
    root = tmp_path_factory.mktemp("shipped")
    shutil.copytree(newest, root / MODEL / newest.name)
    server = ServerProcess(root, root.parent / "shipped-server.log", "--drain-delay", "0")
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


def _ats_v1(server: ServerProcess, png: bytes, seed: int) -> dict:
    with AtsClient(server.target) as client:
        answer = client.predict(png, model=MODEL, seed=seed, mode="sample", attention_map=False)
    return {
        "probabilities": [p.probability for p in answer.probabilities],
        "label": answer.label,
        "patch_boxes": [[p.y, p.x, p.height, p.width] for p in answer.patches],
    }


def _oip_http(server: ServerProcess, png: bytes, seed: int) -> dict:
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
            "parameters": {"seed": seed, "mode": "sample"},
            "outputs": [{"name": "probabilities"}, {"name": "label"}, {"name": "patch_boxes"}],
        }
    ).encode()
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{MODEL}/infer",
        data=header + element,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        outputs = {o["name"]: o for o in json.loads(reply.read())["outputs"]}
    return {
        "probabilities": outputs["probabilities"]["data"],
        "label": outputs["label"]["data"][0],
        "patch_boxes": np.reshape(outputs["patch_boxes"]["data"], outputs["patch_boxes"]["shape"]).tolist(),
    }


def _tfserving(channel: grpc.Channel, png: bytes, seed: int) -> dict:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["image"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[png]))
    request.inputs["seed"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[seed]))
    request.inputs["mode"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"sample"]))
    request.output_filter.extend(["probabilities", "label", "patch_boxes"])
    outputs = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120).outputs

    def array(name: str, dtype: str) -> np.ndarray:
        tensor = outputs[name]
        return np.frombuffer(tensor.tensor_content, dtype).reshape([d.size for d in tensor.tensor_shape.dim])

    return {
        "probabilities": array("probabilities", "<f4").tolist(),
        "label": outputs["label"].string_val[0].decode(),
        "patch_boxes": array("patch_boxes", "<i4").tolist(),
    }


def test_every_protocol_gives_the_ats_v1_answer_and_reads_the_canvases(
    shipped: ServerProcess, canvases: tuple[pathlib.Path, list[int]], triton_venv: TritonVenv
) -> None:
    folder, labels = canvases
    pngs = [(folder / f"{seed}.png").read_bytes() for seed in range(CANVASES)]
    reference = [_ats_v1(shipped, png, seed) for seed, png in enumerate(pngs)]
    answers = {
        "oip.grpc": triton_venv.call("infer_many", "grpc", shipped.target, MODEL, folder),
        "oip.http": [_oip_http(shipped, png, seed) for seed, png in enumerate(pngs)],
    }
    with grpc.insecure_channel(shipped.target) as channel:
        answers["tfserving"] = [_tfserving(channel, png, seed) for seed, png in enumerate(pngs)]
    assert [a.pop("seed") for a in answers["oip.grpc"]] == list(range(CANVASES))

    for protocol, given in answers.items():
        assert len(given) == CANVASES, protocol
        for seed, (answer, expected) in enumerate(zip(given, reference, strict=True)):
            assert answer == expected, f"{protocol}, canvas {seed}"
    assert all(len(r["patch_boxes"]) == 10 for r in reference)  # the model's default n_patches
    correct = sum(r["label"] == str(label) for r, label in zip(reference, labels, strict=True))
    assert correct >= MIN_CORRECT, f"{correct}/{CANVASES} canvases read correctly"
