"""Translation between Open Inference Protocol (KServe v2) messages and the
data plane's plain records.

The model is one tensor in, five out (service/README.md, "Other protocols"):
the image as ``image`` (BYTES [1], the encoded file), ``pixels`` (UINT8
[H, W, C]) or ``tile_path`` (BYTES [1]); options as parameters.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from ats_api.oip.v2 import open_inference_pb2 as pb
from service.dataplane import PredictCall, Served
from service.errors import InvalidInput, clip
from service.models.repository import VersionEntry
from service.pipeline.payload import EncodedImage, Payload, RawTensor, TileRef
from service.pipeline.runner import PredictOptions
from service.uploads import Upload

PLATFORM = "attention_sampling"
_MODES = ("sample", "top_k")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: varies


INPUTS = (
    TensorSpec("image", "BYTES", (1,)),
    TensorSpec("pixels", "UINT8", (-1, -1, -1)),
    TensorSpec("tile_path", "BYTES", (1,)),
)
OUTPUTS = (
    TensorSpec("probabilities", "FP32", (-1,)),
    TensorSpec("label", "BYTES", (1,)),
    TensorSpec("attention_map", "FP32", (-1, -1)),
    TensorSpec("patch_boxes", "INT32", (-1, 4)),
    TensorSpec("patch_attention", "FP32", (-1,)),
)
_INPUTS = {spec.name: spec for spec in INPUTS}
_OUTPUT_NAMES = tuple(spec.name for spec in OUTPUTS)


def version_number(text: str, field: str = "model_version") -> int:
    """A version string as the data plane's number (0: the newest ready one)."""
    if not text:
        return 0
    if not text.isdigit() or int(text) <= 0:
        raise InvalidInput(f"model version {clip(text)} is not a positive integer", field=field)
    return int(text)


def metadata(name: str, versions: list[VersionEntry]) -> pb.ModelMetadataResponse:
    def tensors(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
            for s in specs
        ]

    return pb.ModelMetadataResponse(
        name=name,
        versions=[str(e.version) for e in versions],
        platform=PLATFORM,
        inputs=tensors(INPUTS),
        outputs=tensors(OUTPUTS),
    )


def split_bytes(raw: bytes, field: str) -> list[bytes]:
    """BYTES elements of a raw tensor: each preceded by its 4-byte little-endian length."""
    elements, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidInput("a BYTES element's 4-byte length prefix is cut short", field=field)
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidInput(
                f"a BYTES element declares {size} bytes but {len(raw) - at} remain", field=field
            )
        elements.append(raw[at : at + size])
        at += size
    return elements


def join_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _parameter(value: pb.InferParameter) -> object:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def options(parameters: Mapping[str, pb.InferParameter]) -> PredictOptions:
    """n_patches, seed and mode from the parameters; any other parameter is ignored."""
    values = {
        name: _parameter(parameters[name]) for name in ("n_patches", "seed", "mode") if name in parameters
    }
    for name in ("n_patches", "seed"):
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInput(
                f"parameter {name} must be an integer (int64_param)", field=f"parameters.{name}"
            )
    n_patches = values.get("n_patches") or 0
    assert isinstance(n_patches, int)
    if n_patches < 0:
        raise InvalidInput(
            f"n_patches must be positive (0 for the model default), got {n_patches}",
            field="parameters.n_patches",
        )
    mode = values.get("mode", "sample")
    if mode not in _MODES:
        raise InvalidInput(
            f"parameter mode must be the string 'sample' or 'top_k', got {clip(str(mode))}",
            field="parameters.mode",
        )
    seed = values.get("seed")
    return PredictOptions(n_patches=n_patches, seed=seed if isinstance(seed, int) else None, mode=mode)  # type: ignore[arg-type]


def timeout(parameters: Mapping[str, pb.InferParameter]) -> float | None:
    """The request's ``timeout`` parameter in seconds, or None: microseconds
    in an int64, as tritonclient's ``infer(timeout=...)`` sends it (over
    both transports; Triton itself applies it to queued requests). Here it
    is the call's deadline, counted from the request's arrival."""
    if "timeout" not in parameters:
        return None
    value = _parameter(parameters["timeout"])
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput(
            "parameter timeout must be a positive integer of microseconds (int64_param)",
            field="parameters.timeout",
        )
    return value / 1e6


class Deadline:
    """A call's time left (the data plane's ``Call``): the transport's own
    deadline (a gRPC deadline; None over HTTP) or the request's ``timeout``
    parameter, whichever comes first, both counted from ``started`` (a
    ``time.monotonic()`` reading taken when the request arrived)."""

    def __init__(self, started: float, transport: float | None, parameter: float | None) -> None:
        limits = [t for t in (transport, parameter) if t is not None]
        self._at = started + min(limits) if limits else None

    def time_remaining(self) -> float | None:
        return None if self._at is None else self._at - time.monotonic()


@dataclasses.dataclass(frozen=True)
class Image:
    """The request's one image input, its data still unconverted."""

    name: str
    shape: tuple[int, ...]
    field: str
    raw: bytes | None
    contents: pb.InferTensorContents

    def nbytes(self) -> int:
        return len(self.raw) if self.raw is not None else sum(len(b) for b in self.contents.bytes_contents)

    def payload(self) -> Payload:
        if self.name == "pixels":
            return RawTensor(shape=self.shape, dtype="uint8", data=self._pixel_bytes())
        data = self._single_bytes()
        if self.name == "image":
            return EncodedImage(data)
        try:
            path = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("tile_path is not UTF-8 text", field=self.field) from None
        return TileRef(path, None)

    def _single_bytes(self) -> bytes:
        elements = (
            split_bytes(self.raw, f"raw_input_contents[{self.field}]")
            if self.raw is not None
            else list(self.contents.bytes_contents)
        )
        if len(elements) != 1:
            raise InvalidInput(
                f"{self.name} holds {len(elements)} elements; it takes exactly 1", field=self.field
            )
        return elements[0]

    def _pixel_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        values = np.asarray(self.contents.uint_contents, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise InvalidInput("pixels values must be 0-255 (UINT8)", field=self.field)
        return values.astype(np.uint8).tobytes()


def image(request: pb.ModelInferRequest) -> Image:
    """The one known input of ``request``, its datatype and shape checked."""
    if len(request.inputs) != 1:
        raise InvalidInput(
            f"the request has {len(request.inputs)} inputs; send exactly one of {', '.join(_INPUTS)}",
            field="inputs",
        )
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs", field="raw_input_contents"
        )
    tensor = request.inputs[0]
    field = "inputs[0]"
    spec = _INPUTS.get(tensor.name)
    if spec is None:
        raise InvalidInput(
            f"unknown input {clip(tensor.name)}; this model takes one of {', '.join(_INPUTS)}",
            field=f"{field}.name",
        )
    if tensor.datatype != spec.datatype:
        raise InvalidInput(
            f"input {spec.name} must be {spec.datatype}, got {clip(tensor.datatype)}",
            field=f"{field}.datatype",
        )
    shape = tuple(tensor.shape)
    fits = len(shape) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    )
    if not fits or min(shape, default=0) <= 0:
        want = ", ".join("N" if d == -1 else str(d) for d in spec.shape)
        raise InvalidInput(
            f"input {spec.name} must have shape [{want}], got {list(shape)[:8]}", field=f"{field}.shape"
        )
    return Image(spec.name, shape, field, raw[0] if raw else None, tensor.contents)


def predict_call(
    request: pb.ModelInferRequest, payload: Callable[[Upload], Awaitable[Payload]]
) -> PredictCall:
    parameters = dict(request.parameters)
    if len(request.inputs) == 1:  # an input's parameters count as the request's
        parameters.update(request.inputs[0].parameters)
    return PredictCall(
        request.model_name, version_number(request.model_version), options(parameters), payload
    )


def requested_outputs(request: pb.ModelInferRequest) -> tuple[str, ...]:
    """The outputs to send, in the request's order (all when it names none)."""
    names = tuple(o.name for o in request.outputs)
    for i, name in enumerate(names):
        if name not in _OUTPUT_NAMES:
            raise InvalidInput(
                f"unknown output {clip(name)}; this model has {', '.join(_OUTPUT_NAMES)}",
                field=f"outputs[{i}].name",
            )
    return names or _OUTPUT_NAMES


def output_values(served: Served) -> dict[str, np.ndarray | list[bytes]]:
    """Every output by name: little-endian arrays, or BYTES elements (shared with TF Serving's front end)."""
    spec, prediction = served.model.spec, served.prediction
    boxes = np.zeros((len(prediction.offsets), 4), np.int32)
    if len(boxes):
        boxes[:, :2] = prediction.offsets
        boxes[:, 2:] = spec.patch_size
    return {
        "probabilities": np.asarray(prediction.probabilities, "<f4"),
        "label": [spec.classes[int(prediction.probabilities.argmax())].encode()],
        "attention_map": np.asarray(prediction.attention, "<f4"),
        "patch_boxes": boxes.astype("<i4"),
        "patch_attention": np.asarray(prediction.patch_probabilities, "<f4"),
    }


def response(
    served: Served, request: pb.ModelInferRequest, names: tuple[str, ...], raw: bool
) -> pb.ModelInferResponse:
    """The outputs ``names``, in that order, in ``raw_output_contents`` when
    ``raw`` (gRPC: when the request sent raw inputs, where stock clients read
    them), typed contents otherwise."""
    message = pb.ModelInferResponse(
        model_name=served.model.name, model_version=str(served.model.version), id=request.id
    )
    message.parameters["seed"].int64_param = served.prediction.seed
    datatypes = {spec.name: spec.datatype for spec in OUTPUTS}
    values = output_values(served)
    for name in names:
        value = values[name]
        output = message.outputs.add(name=name, datatype=datatypes[name])
        if isinstance(value, list):
            output.shape.append(len(value))
            if raw:
                message.raw_output_contents.append(join_bytes(value))
            else:
                output.contents.bytes_contents.extend(value)
            continue
        output.shape.extend(value.shape)
        if raw:
            message.raw_output_contents.append(value.tobytes())
        elif value.dtype.kind == "i":
            output.contents.int_contents.extend(value.ravel().tolist())
        else:
            output.contents.fp32_contents.extend(value.ravel().tolist())
    return message
