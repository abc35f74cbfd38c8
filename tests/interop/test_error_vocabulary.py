"""Errors raised below the front ends name ats.v1 fields (``tile.path``,
``tensor.shape``, ``model_name``); each other protocol's client reads them
in its own names, in the message and in the gRPC BadRequest field."""

from __future__ import annotations

import json
import pathlib
import struct
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ats_api.oip.v2 import open_inference_pb2 as oip
from ats_api.oip.v2 import open_inference_pb2_grpc as oip_grpc
from bench.common import ServerProcess
from service.errors import InvalidInput, NotFound, PermissionDenied, Unsupported
from service.server import vocabulary
from tests.support import TINY_MODEL

# Words of ats.v1 field paths that no other protocol's client sent.
ATS_V1_WORDS = ("tile.path", "tensor.", "tensor shape", "'tile' sources", "header.")


def test_only_known_fields_and_their_words_are_renamed() -> None:
    tile = PermissionDenied("tile.path may not contain '..'", field="tile.path")
    renamed = vocabulary.OIP.translate(tile)
    assert (renamed.message, renamed.field, type(renamed)) == (
        "tile_path may not contain '..'",
        "inputs[0]",
        PermissionDenied,
    )
    assert tile.message == "tile.path may not contain '..'", "the original is left as it was"
    shape = InvalidInput("tensor shape [2, 2, 5] is not (height, width, 3)", field="tensor.shape")
    assert vocabulary.OIP.translate(shape).message == "pixels shape [2, 2, 5] is not (height, width, 3)"
    assert vocabulary.TFSERVING.translate(shape).message.startswith("image tensor_shape [2, 2, 5]")
    assert vocabulary.TFSERVING.translate(shape).field == "inputs.image.tensor_shape"
    unsupported = Unsupported(
        "'tile' sources are not supported by this server; send the pixels as one of: image, tensor",
        field="tile",
    )
    assert vocabulary.OIP.translate(unsupported).message == (
        "'tile_path' inputs are not supported by this server; send the image as one of: image, pixels"
    )
    required = InvalidInput("model_name is required: this server serves several models", field="model_name")
    assert vocabulary.TFSERVING.translate(required).message.startswith("model_spec.name is required")
    assert vocabulary.OIP.translate(required) is required  # a field of its own protocol too
    # client text is not rewritten unless it is one of the field's words
    echoed = NotFound("no file 'a/tile.path.png' under the data root", field="tile.path")
    assert vocabulary.OIP.translate(echoed).message == echoed.message
    own = InvalidInput("tile_path is not UTF-8 text", field="inputs[0]")
    assert vocabulary.OIP.translate(own) is own


def _field(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    violation = error_details_pb2.BadRequest()
    status.details[0].Unpack(violation)
    return violation.field_violations[0].field


def _neutral(message: str) -> None:
    assert not [w for w in ATS_V1_WORDS if w in message], message


@pytest.mark.slow
def test_each_protocol_reads_its_own_names(start_server, make_repository, tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server: ServerProcess = start_server(make_repository(), "--data-root", str(data))
    five = np.zeros((40, 40, 5), np.uint8)  # the model takes 3 channels

    with grpc.insecure_channel(server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        for name, datatype, shape, raw, field in [
            ("pixels", "UINT8", [40, 40, 5], five.tobytes(), "inputs[0].shape"),
            ("tile_path", "BYTES", [1], struct.pack("<I", 8) + b"../x.png", "inputs[0]"),
        ]:
            request = oip.ModelInferRequest(model_name=TINY_MODEL, raw_input_contents=[raw])
            request.inputs.add(name=name, datatype=datatype, shape=shape)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, timeout=60)
            _neutral(refused.value.details())
            assert _field(refused.value) == field, refused.value.details()
            assert ("pixels shape" if name == "pixels" else "tile_path") in refused.value.details()

        tf = predict_pb2.PredictRequest()
        tf.model_spec.name = TINY_MODEL
        tf.inputs["image"].CopyFrom(
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_UINT8,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in five.shape]
                ),
                tensor_content=five.tobytes(),
            )
        )
        with pytest.raises(grpc.RpcError) as refused:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(tf, timeout=60)
        _neutral(refused.value.details())
        assert "image tensor_shape" in refused.value.details()
        assert _field(refused.value) == "inputs.image.tensor_shape"

    body = json.dumps(
        {"inputs": [{"name": "tile_path", "datatype": "BYTES", "shape": [1], "data": ["../x.png"]}]}
    ).encode()
    request = urllib.request.Request(f"{server.http_url}/v2/models/{TINY_MODEL}/infer", data=body)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    message = json.loads(refused.value.read())["error"]
    assert refused.value.code == 403 and "tile_path may not contain '..'" in message
    _neutral(message)


@pytest.mark.slow
def test_without_a_data_root_tile_path_is_refused_in_oip_terms(ats_server: ServerProcess) -> None:
    body = json.dumps(
        {"inputs": [{"name": "tile_path", "datatype": "BYTES", "shape": [1], "data": ["x.png"]}]}
    ).encode()
    request = urllib.request.Request(f"{ats_server.http_url}/v2/models/{TINY_MODEL}/infer", data=body)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    message = json.loads(refused.value.read())["error"]
    assert refused.value.code == 501 and "'tile_path' inputs are not supported" in message, message
    _neutral(message)
