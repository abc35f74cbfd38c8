"""The Open Inference Protocol over gRPC and HTTP/REST, called by the stock
tritonclient from PyPI (its own venv, no TensorFlow) against real
``ats-serve`` processes, and checked against ats.v1 on the same server: same
model, same seed, same answer."""

from __future__ import annotations

import pathlib

import grpc
import numpy as np
import pytest

from ats_api.oip.v2 import open_inference_pb2
from ats_client import AtsClient
from bench.common import ServerProcess
from service.errors import Code
from service.server.oip_http import HTTP_STATUS
from tests.interop.conftest import TritonVenv
from tests.support import TINY_MODEL, encode_image, metric, random_image, scrape

pytestmark = pytest.mark.slow

# What the specification added after the copy tritonclient carries: ours has it, theirs not.
NEWER_THAN_TRITON = {
    "inference.ModelMetadataResponse.properties",
    "inference.ModelMetadataResponse.PropertiesEntry",
}
PROTOCOLS = ["grpc", "http"]
OUTPUTS = ["probabilities", "label", "attention_map", "patch_boxes", "patch_attention"]


def test_the_client_venv_holds_tritonclient_and_nothing_of_ours(triton_venv: TritonVenv) -> None:
    installed = triton_venv.installed()
    assert "tritonclient" in installed
    assert not installed & {"tensorflow", "tensorflow-cpu", "keras", "attention-sampling-client"}


def target(protocol: str, server: ServerProcess) -> str:
    return server.target if protocol == "grpc" else f"127.0.0.1:{server.http_port}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health_and_server_metadata(
    triton_venv: TritonVenv, ats_server: ServerProcess, protocol: str
) -> None:
    health = triton_venv.call("health", protocol, target(protocol, ats_server))
    assert health["live"] is True and health["ready"] is True
    assert health["model"] is True and health["model_v1"] is True
    # An unknown model or version is NOT_FOUND: tritonclient.grpc raises it,
    # tritonclient.http turns every status but 200 into False.
    if protocol == "grpc":
        assert health["model_v9"]["status"] == "StatusCode.NOT_FOUND"
        assert health["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
        assert "no-such-model" in health["unknown_model"]["message"]
    else:
        assert health["model_v9"] is False and health["unknown_model"] is False
    assert health["server"]["name"] == "ats-serve"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_metadata_lists_the_tensors_and_versions(
    triton_venv: TritonVenv, ats_server: ServerProcess, protocol: str
) -> None:
    found = triton_venv.call("metadata", protocol, target(protocol, ats_server))
    assert found["name"] == TINY_MODEL and found["versions"] == ["1"]
    tensors = {  # int64 shapes come as strings in protobuf's JSON, as tritonclient gives them
        (t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
        for t in found["inputs"] + found["outputs"]
    }
    assert tensors == {
        ("image", "BYTES", (1,)),
        ("pixels", "UINT8", (-1, -1, -1)),
        ("tile_path", "BYTES", (1,)),
        ("probabilities", "FP32", (-1,)),
        ("label", "BYTES", (1,)),
        ("attention_map", "FP32", (-1, -1)),
        ("patch_boxes", "INT32", (-1, 4)),
        ("patch_attention", "FP32", (-1,)),
    }


def _same_as_ats_v1(result: dict, reference) -> None:
    """Every OIP output equals the ats.v1 response's counterpart."""
    outputs = result["outputs"]
    assert result["model_name"] == TINY_MODEL and result["model_version"] == "1"
    assert outputs["probabilities"]["dtype"] == "float32"
    assert outputs["probabilities"]["values"] == [p.probability for p in reference.probabilities]
    assert outputs["label"] == {"dtype": "object", "shape": [1], "values": [reference.label]}
    attention = reference.attention
    assert outputs["attention_map"]["shape"] == [attention.height, attention.width]
    assert np.ravel(outputs["attention_map"]["values"]).tolist() == list(attention.values)
    assert outputs["patch_boxes"]["dtype"] == "int32"
    assert outputs["patch_boxes"]["values"] == [[p.y, p.x, p.height, p.width] for p in reference.patches]
    assert outputs["patch_attention"]["values"] == [p.probability for p in reference.patches]
    assert len(reference.patches) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bytes_image_gives_every_output_and_the_ats_v1_answer(
    triton_venv: TritonVenv, ats_server: ServerProcess, tmp_path: pathlib.Path, protocol: str
) -> None:
    image = tmp_path / "image.png"
    image.write_bytes(encode_image(random_image(200, 240, seed=3)))
    before = scrape(ats_server.metrics_url)
    result = triton_venv.call("infer", protocol, target(protocol, ats_server), "image", image, 11)
    after = scrape(ats_server.metrics_url)
    assert result["order"] == OUTPUTS
    seed = result["parameters"]["seed"]
    assert seed == ({"int64_param": "11"} if protocol == "grpc" else 11)
    with AtsClient(ats_server.target) as client:
        reference = client.predict(image, n_patches=3, seed=11)
    _same_as_ats_v1(result, reference)
    labels = {"protocol": f"oip.{protocol}", "rpc": "ModelInfer", "code": "OK", "model": TINY_MODEL}
    counted = metric(after, "ats_requests_total", **labels)
    assert counted - metric(before, "ats_requests_total", **labels) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_uint8_pixels_and_a_chosen_subset_of_outputs(
    triton_venv: TritonVenv, ats_server: ServerProcess, tmp_path: pathlib.Path, protocol: str
) -> None:
    pixels = random_image(150, 170, seed=4)
    np.save(tmp_path / "pixels.npy", pixels)
    result = triton_venv.call(
        "infer",
        protocol,
        target(protocol, ats_server),
        "pixels",
        tmp_path / "pixels.npy",
        5,
        "patch_attention",
        "label",
    )
    assert result["order"] == ["patch_attention", "label"]
    with AtsClient(ats_server.target) as client:
        reference = client.predict(pixels, n_patches=3, seed=5)
    assert result["outputs"]["label"]["values"] == [reference.label]
    assert result["outputs"]["patch_attention"]["values"] == [p.probability for p in reference.patches]


def test_tile_path_reads_under_the_data_root(
    triton_venv: TritonVenv, start_server, make_repository, tmp_path: pathlib.Path
) -> None:
    """One server, both transports."""
    data = tmp_path / "slides"
    data.mkdir()
    (data / "tile.png").write_bytes(encode_image(random_image(180, 160, seed=6)))
    server = start_server(make_repository(), "--data-root", str(data))
    with AtsClient(server.target) as client:
        reference = client.predict_tile("tile.png", n_patches=3, seed=2)
    for protocol in PROTOCOLS:
        _same_as_ats_v1(
            triton_venv.call("infer", protocol, target(protocol, server), "tile_path", "tile.png", 2),
            reference,
        )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refusals_carry_the_documented_codes(
    triton_venv: TritonVenv, ats_server: ServerProcess, tmp_path: pathlib.Path, protocol: str
) -> None:
    image = tmp_path / "image.png"
    image.write_bytes(encode_image(random_image(64, 64)))
    errors = triton_venv.call("errors", protocol, target(protocol, ats_server), image)
    expected = {
        "datatype": Code.INVALID_ARGUMENT,
        "shape": Code.INVALID_ARGUMENT,
        "pixels_shape": Code.INVALID_ARGUMENT,
        "unknown_model": Code.NOT_FOUND,
        "unknown_version": Code.NOT_FOUND,
        "bad_version": Code.INVALID_ARGUMENT,
        "unknown_output": Code.INVALID_ARGUMENT,
        "corrupt_image": Code.INVALID_ARGUMENT,
        "late": Code.DEADLINE_EXCEEDED,
        "in_time": Code.OK,
        "metadata_unknown_model": Code.NOT_FOUND,
        "metadata_unknown_version": Code.NOT_FOUND,
    }
    as_reported = {  # tritonclient's status(): the gRPC code's name, or the HTTP status
        "grpc": lambda code: f"StatusCode.{code.value}" if code is not Code.OK else "OK",
        "http": lambda code: str(HTTP_STATUS[code]) if code is not Code.OK else "OK",
    }[protocol]
    assert {name: error["status"] for name, error in errors.items()} == {
        name: as_reported(code) for name, code in expected.items()
    }
    assert "must be UINT8" in errors["datatype"]["message"]
    assert "shape [1]" in errors["shape"]["message"]
    assert "logits" in errors["unknown_output"]["message"]


def test_a_message_that_does_not_parse_is_invalid_argument(ats_server: ServerProcess) -> None:
    with grpc.insecure_channel(ats_server.target) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as raised:
            infer(b"\x0a\xff\xff\xff", timeout=30)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def _fields(message) -> dict[str, list]:
    return {
        f.name: [f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else ""]
        for f in message.fields
    }


def test_descriptors_match_the_ones_tritonclient_ships(triton_venv: TritonVenv) -> None:
    """Every message of ours exists in tritonclient with the same fields
    (name, number, type, repetition, message type); ours may add only what the
    specification added after Triton's copy (ModelMetadataResponse.properties)."""
    theirs = triton_venv.call("descriptors")
    ours: dict[str, dict[str, list]] = {}

    def add(message) -> None:
        ours[message.full_name] = _fields(message)
        for nested in message.nested_types:
            add(nested)

    for message in open_inference_pb2.DESCRIPTOR.message_types_by_name.values():
        add(message)
    assert len(ours) >= 20
    for name, fields in ours.items():
        if name in NEWER_THAN_TRITON:
            continue
        assert name in theirs["messages"], name
        kept = {k: v for k, v in fields.items() if f"{name}.{k}" not in NEWER_THAN_TRITON}
        assert kept == theirs["messages"][name], name
    service = open_inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == theirs["service"]
    for method in service.methods:
        assert theirs["methods"][method.name] == [method.input_type.full_name, method.output_type.full_name]
