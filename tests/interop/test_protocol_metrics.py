"""Every front end is counted under its own ``protocol`` label: one prediction
through each of ats.v1, OIP gRPC, OIP HTTP and TF Serving Predict on a real
server moves exactly that protocol's request counter and latency histogram,
under the protocol's own RPC name."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ats_api.oip.v2 import open_inference_pb2 as oip
from ats_api.oip.v2 import open_inference_pb2_grpc as oip_grpc
from ats_client import AtsClient
from bench.common import ServerProcess
from tests.support import TINY_MODEL, encode_image, metric, random_image, scrape

pytestmark = pytest.mark.slow

PNG = encode_image(random_image(64, 80, seed=5))


def _ats_v1(server: ServerProcess) -> None:
    with AtsClient(server.target) as client:
        assert client.predict(PNG, n_patches=2, seed=1).model_name == TINY_MODEL


def _oip_grpc(server: ServerProcess) -> None:
    request = oip.ModelInferRequest(model_name=TINY_MODEL)
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(PNG)) + PNG)
    request.parameters["n_patches"].int64_param = 2
    with grpc.insecure_channel(server.target) as channel:
        answer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert answer.model_name == TINY_MODEL


def _oip_http(server: ServerProcess) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(PNG)},
                }
            ],
            "parameters": {"n_patches": 2},
        }
    ).encode()
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/{TINY_MODEL}/infer",
        data=header + struct.pack("<I", len(PNG)) + PNG,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert json.loads(reply.read())["model_name"] == TINY_MODEL


def _tfserving(server: ServerProcess) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = TINY_MODEL
    request.inputs["image"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[PNG]))
    with grpc.insecure_channel(server.target) as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert answer.model_spec.name == TINY_MODEL


# protocol label -> (rpc label, one successful prediction through it)
CALLS: dict[str, tuple[str, Callable[[ServerProcess], None]]] = {
    "ats.v1": ("Predict", _ats_v1),
    "oip.grpc": ("ModelInfer", _oip_grpc),
    "oip.http": ("ModelInfer", _oip_http),
    "tfserving": ("Predict", _tfserving),
}


@pytest.mark.parametrize("protocol", list(CALLS))
def test_one_prediction_moves_its_own_protocols_series(ats_server: ServerProcess, protocol: str) -> None:
    rpc, call = CALLS[protocol]
    before = scrape(ats_server.metrics_url)
    call(ats_server)
    after = scrape(ats_server.metrics_url)

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    ok = {"model": TINY_MODEL, "code": "OK"}
    assert moved("ats_requests_total", protocol=protocol, rpc=rpc, version="1", **ok) == 1
    assert moved("ats_requests_total", protocol=protocol) == 1  # that call only
    assert moved("ats_request_seconds_count", model=TINY_MODEL, protocol=protocol, rpc=rpc) == 1
    assert moved("ats_request_seconds_sum", model=TINY_MODEL, protocol=protocol, rpc=rpc) > 0
    for other in set(CALLS) - {protocol}:
        assert moved("ats_requests_total", protocol=other) == 0, other
        assert moved("ats_request_seconds_count", protocol=other) == 0, other
    # no series names an RPC the old way ("rest.ModelInfer", "tfs.Predict")
    assert not [
        labels for (name, labels) in after if name == "ats_requests_total" and "." in dict(labels)["rpc"]
    ]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_model_ready_is_counted_per_protocol(ats_server: ServerProcess, transport: str) -> None:
    before = scrape(ats_server.metrics_url)
    if transport == "grpc":
        with grpc.insecure_channel(ats_server.target) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelReady(oip.ModelReadyRequest(name=TINY_MODEL), timeout=10).ready
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelReady(oip.ModelReadyRequest(name="no-such-model"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    else:
        with urllib.request.urlopen(
            f"{ats_server.http_url}/v2/models/{TINY_MODEL}/ready", timeout=10
        ) as reply:
            assert reply.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{ats_server.http_url}/v2/models/no-such-model/ready", timeout=10)
        assert refused.value.code == 404
    after = scrape(ats_server.metrics_url)
    labels = {"protocol": f"oip.{transport}", "rpc": "ModelReady"}
    for model, code in ((TINY_MODEL, "OK"), ("", "NOT_FOUND")):
        moved = metric(after, "ats_requests_total", model=model, code=code, **labels) - metric(
            before, "ats_requests_total", model=model, code=code, **labels
        )
        assert moved == 1, (model, code)
