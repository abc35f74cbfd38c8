"""Calls made with the stock ``tritonclient`` package, run by the Python of
the virtual environment it is installed in (never by the test process: its
``inference.*`` descriptors would clash with the server's own in one
protobuf pool). Standard library, numpy and tritonclient only.

    python tritonclient_calls.py SCENARIO PROTOCOL TARGET [ARGS...]   # prints one JSON object

PROTOCOL is ``grpc`` or ``http``: the same calls through tritonclient.grpc or
tritonclient.http (whose APIs match, bar ``as_json``).
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc
import tritonclient.http
from tritonclient.utils import InferenceServerException

MODEL = "tiny"
OUTPUTS = ("probabilities", "label", "attention_map", "patch_boxes", "patch_attention")


MODULES: dict[str, Any] = {"grpc": tritonclient.grpc, "http": tritonclient.http}
# keyword arguments that make a gRPC answer a dict, as HTTP's always is
AS_JSON: dict[str, dict[str, bool]] = {"grpc": {"as_json": True}, "http": {}}


class Client:
    def __init__(self, protocol: str, target: str) -> None:
        self.module = MODULES[protocol]
        self.as_json = AS_JSON[protocol]
        self.client = self.module.InferenceServerClient(url=target)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def _ready(call: Callable[[], bool]) -> bool | dict[str, str]:
    """is_model_ready's answer, or the error it raised (tritonclient.grpc
    raises on NOT_FOUND; tritonclient.http answers False for any status but 200)."""
    try:
        return call()
    except InferenceServerException as error:
        return {"status": str(error.status()), "message": str(error.message())}


def health(protocol: str, target: str) -> dict[str, Any]:
    client = Client(protocol, target)
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model": client.is_model_ready(MODEL),
        "model_v1": client.is_model_ready(MODEL, "1"),
        "model_v9": _ready(lambda: client.is_model_ready(MODEL, "9")),
        "unknown_model": _ready(lambda: client.is_model_ready("no-such-model")),
        "server": client.get_server_metadata(**client.as_json),
    }


def metadata(protocol: str, target: str) -> dict[str, Any]:
    client = Client(protocol, target)
    return client.get_model_metadata(MODEL, **client.as_json)


def _input(module: Any, name: str, path: str) -> Any:
    """``image``/``tile_path``: one BYTES element (the file's bytes or the path); ``pixels``: a .npy file."""
    if name == "pixels":
        array = np.load(path)
        tensor = module.InferInput("pixels", list(array.shape), "UINT8")
        tensor.set_data_from_numpy(array)
        return tensor
    data = open(path, "rb").read() if name == "image" else path.encode()  # noqa: SIM115
    tensor = module.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return tensor


def infer(protocol: str, target: str, name: str, path: str, seed: str, *outputs: str) -> dict[str, Any]:
    """Every requested output (all when none is named) read with as_numpy."""
    client = Client(protocol, target)
    module = client.module
    result = client.infer(
        MODEL,
        [_input(module, name, path)],
        outputs=[module.InferRequestedOutput(o) for o in outputs] or None,
        parameters={"seed": int(seed), "n_patches": 3, "mode": "sample", "some_other_parameter": "ignored"},
    )
    response = result.get_response(**client.as_json)
    arrays = {o["name"]: result.as_numpy(o["name"]) for o in response["outputs"]}
    return {
        "model_name": response["model_name"],
        "model_version": response["model_version"],
        "parameters": response.get("parameters", {}),
        "order": [o["name"] for o in response["outputs"]],
        "outputs": {
            name: {
                "dtype": str(array.dtype),
                "shape": list(array.shape),
                "values": [v.decode() for v in array.ravel()] if array.dtype == object else array.tolist(),
            }
            for name, array in arrays.items()
        },
    }


def infer_many(protocol: str, target: str, model: str, folder: str) -> list[dict[str, Any]]:
    """Every ``<seed>.png`` of ``folder`` (sorted by seed), sampled with that
    seed: probabilities, label and patch boxes, read with as_numpy."""
    client = Client(protocol, target)
    module = client.module
    answers = []
    for path in sorted(pathlib.Path(folder).glob("*.png"), key=lambda p: int(p.stem)):
        result = client.infer(
            model,
            [_input(module, "image", str(path))],
            outputs=[module.InferRequestedOutput(o) for o in ("probabilities", "label", "patch_boxes")],
            parameters={"seed": int(path.stem), "mode": "sample"},
        )
        answers.append(
            {
                "seed": int(path.stem),
                "probabilities": result.as_numpy("probabilities").tolist(),
                "label": result.as_numpy("label")[0].decode(),
                "patch_boxes": result.as_numpy("patch_boxes").tolist(),
            }
        )
    return answers


def _error(call: Callable[[], object]) -> dict[str, str]:
    try:
        call()
    except InferenceServerException as error:
        return {"status": str(error.status()), "message": str(error.message())}
    return {"status": "OK", "message": ""}


def errors(protocol: str, target: str, image_path: str) -> dict[str, dict[str, str]]:
    """Each documented refusal, as the client reports it."""
    client = Client(protocol, target)
    module = client.module
    image = _input(module, "image", image_path)
    as_float = module.InferInput("pixels", [2, 2, 3], "FP32")
    as_float.set_data_from_numpy(np.zeros((2, 2, 3), np.float32))
    two = module.InferInput("image", [2], "BYTES")
    two.set_data_from_numpy(np.array([b"a", b"b"], dtype=np.object_))
    flat = module.InferInput("pixels", [12], "UINT8")
    flat.set_data_from_numpy(np.zeros(12, np.uint8))
    return {
        "datatype": _error(lambda: client.infer(MODEL, [as_float])),
        "shape": _error(lambda: client.infer(MODEL, [two])),
        "pixels_shape": _error(lambda: client.infer(MODEL, [flat])),
        "unknown_model": _error(lambda: client.infer("no-such-model", [image])),
        "unknown_version": _error(lambda: client.infer(MODEL, [image], model_version="9")),
        "bad_version": _error(lambda: client.infer(MODEL, [image], model_version="latest")),
        "unknown_output": _error(
            lambda: client.infer(MODEL, [image], outputs=[module.InferRequestedOutput("logits")])
        ),
        "corrupt_image": _error(lambda: client.infer(MODEL, [_input(module, "image", __file__)])),
        # infer(timeout=) sends the parameter timeout, in microseconds: the call's deadline here
        "late": _error(lambda: client.infer(MODEL, [image], timeout=1)),
        "in_time": _error(lambda: client.infer(MODEL, [image], timeout=60_000_000)),
        "metadata_unknown_model": _error(lambda: client.get_model_metadata("no-such-model")),
        "metadata_unknown_version": _error(lambda: client.get_model_metadata(MODEL, "9")),
    }


def descriptors() -> dict[str, Any]:
    """Every message of tritonclient's generated service module: fields by name
    as (number, type, repeated, message type), and the service's methods."""
    from tritonclient.grpc import service_pb2

    messages: dict[str, dict[str, list[Any]]] = {}

    def add(message: Any) -> None:
        messages[message.full_name] = {
            f.name: [f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else ""]
            for f in message.fields
        }
        for nested in message.nested_types:
            add(nested)

    for message in service_pb2.DESCRIPTOR.message_types_by_name.values():
        add(message)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    return {"messages": messages, "service": service.full_name, "methods": methods}


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    print(json.dumps(globals()[scenario](*args)))
