"""TensorFlow Serving's gRPC API called with the stock ``tensorflow_serving.apis``
stubs (the tensorflow-serving-api package) against a real ``ats-serve``:
Predict with an encoded image and with uint8 pixels gives the ats.v1
answer for the same seed; metadata, model status and refusals."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from ats_client import AtsClient
from bench.common import ServerProcess
from tests.support import TINY_MODEL, encode_image, random_image

pytestmark = pytest.mark.slow


def _shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )


def _request(
    image: tensor_pb2.TensorProto, seed: int, signature_name: str = "", version: int = 0
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = TINY_MODEL
    request.model_spec.signature_name = signature_name
    if version:
        request.model_spec.version.value = version
    request.inputs["image"].CopyFrom(image)
    request.inputs["seed"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[seed]))
    request.inputs["n_patches"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[3]))
    return request


def _array(tensor: tensor_pb2.TensorProto, dtype: str) -> np.ndarray:
    return np.frombuffer(tensor.tensor_content, dtype).reshape([d.size for d in tensor.tensor_shape.dim])


@pytest.fixture(scope="module")
def channel(ats_server: ServerProcess):
    with grpc.insecure_channel(ats_server.target) as opened:
        yield opened


def _same_as_ats_v1(response: predict_pb2.PredictResponse, reference) -> None:
    outputs = response.outputs
    assert response.model_spec.name == TINY_MODEL and response.model_spec.version.value == 1
    assert _array(outputs["probabilities"], "<f4").tolist() == [
        p.probability for p in reference.probabilities
    ]
    assert list(outputs["label"].string_val) == [reference.label.encode()]
    attention = _array(outputs["attention_map"], "<f4")
    assert attention.shape == (reference.attention.height, reference.attention.width)
    assert attention.ravel().tolist() == list(reference.attention.values)
    boxes = _array(outputs["patch_boxes"], "<i4").tolist()
    assert boxes == [[p.y, p.x, p.height, p.width] for p in reference.patches]
    assert _array(outputs["patch_attention"], "<f4").tolist() == [p.probability for p in reference.patches]


def test_predict_with_an_encoded_image(channel: grpc.Channel, ats_server: ServerProcess) -> None:
    png = encode_image(random_image(120, 140, seed=12))
    image = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(1), string_val=[png])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    response = stub.Predict(_request(image, 31, signature_name="predict_image"), timeout=60)
    with AtsClient(ats_server.target) as client:
        _same_as_ats_v1(response, client.predict(png, n_patches=3, seed=31))


@pytest.mark.parametrize("layout", ["tensor_content", "int_val"])
def test_predict_with_uint8_pixels(channel: grpc.Channel, ats_server: ServerProcess, layout: str) -> None:
    pixels = random_image(60, 70, seed=13)
    image = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_shape=_shape(*pixels.shape))
    if layout == "tensor_content":
        image.tensor_content = pixels.tobytes()
    else:
        image.int_val.extend(pixels.ravel().tolist())
    request = _request(image, 32)
    request.output_filter.extend(["label", "patch_boxes"])
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert set(response.outputs) == {"label", "patch_boxes"}
    with AtsClient(ats_server.target) as client:
        reference = client.predict(pixels, n_patches=3, seed=32)
    assert list(response.outputs["label"].string_val) == [reference.label.encode()]
    boxes = _array(response.outputs["patch_boxes"], "<i4").tolist()
    assert boxes == [[p.y, p.x, p.height, p.width] for p in reference.patches]


def test_model_metadata_and_status(channel: grpc.Channel) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = TINY_MODEL
    found = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert found.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["predict_image"]
    assert set(signature.inputs) == {"image", "n_patches", "seed", "mode"}
    assert signature.outputs["patch_boxes"].dtype == types_pb2.DT_INT32
    assert [d.size for d in signature.outputs["patch_boxes"].tensor_shape.dim] == [-1, 4]
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = TINY_MODEL
    answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=30)
    assert [(v.version, v.state) for v in answer.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]


def test_refusals(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    good = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[encode_image(random_image(32, 32))])
    wrong_dtype = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 2, 3), float_val=[0.0] * 12
    )
    cases = {
        "wrong dtype": (_request(wrong_dtype, 1), grpc.StatusCode.INVALID_ARGUMENT),
        "wrong shape": (
            _request(
                tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_shape=_shape(12), int_val=[0] * 12), 1
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "unknown signature": (_request(good, 1, signature_name="classify"), grpc.StatusCode.INVALID_ARGUMENT),
        "unknown version": (_request(good, 1, version=9), grpc.StatusCode.NOT_FOUND),
    }
    unknown_model = _request(good, 1)
    unknown_model.model_spec.name = "no-such-model"
    cases["unknown model"] = (unknown_model, grpc.StatusCode.NOT_FOUND)
    for case, (request, code) in cases.items():
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
        assert raised.value.code() == code, case
