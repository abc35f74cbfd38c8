"""Translation between ats.v1 messages and the data plane's plain records."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
from google.protobuf.message import Message

from ats_api.v1 import attention_sampling_pb2 as pb
from model_ops.sampling import Mode
from service.dataplane import InputSupport, PredictCall, Served
from service.errors import InvalidInput
from service.models.repository import VersionEntry
from service.pipeline.payload import EncodedImage, Payload, RawTensor, TileRef
from service.pipeline.runner import PredictOptions
from service.uploads import Upload

_STATES = {
    "LOADING": pb.ModelVersionStatus.LOADING,
    "READY": pb.ModelVersionStatus.READY,
    "UNLOADING": pb.ModelVersionStatus.UNLOADING,
    "FAILED": pb.ModelVersionStatus.FAILED,
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _set_packed_floats(message: Message, field: str, values: np.ndarray) -> None:
    """Fill a repeated float field from an array through its packed wire form:
    a copy of the bytes instead of one Python float per element (~7x faster
    for a 188x188 map)."""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    tag = message.DESCRIPTOR.fields_by_name[field].number << 3 | 2  # length-delimited
    message.MergeFromString(_varint(tag) + _varint(len(data)) + data)


def _dtype(tensor: pb.Tensor) -> str:
    if tensor.dtype not in pb.DataType.values():  # proto3 enums keep unknown numbers
        raise InvalidInput(
            f"tensor dtype {tensor.dtype} is not a DataType value; use UINT8", field="tensor.dtype"
        )
    return pb.DataType.Name(tensor.dtype).lower()


def payload(request: pb.PredictRequest) -> Payload:
    """The image of a unary request."""
    kind = request.WhichOneof("source")
    if kind == "image":
        return EncodedImage(request.image)
    if kind == "tensor":
        return RawTensor(
            shape=tuple(request.tensor.shape), dtype=_dtype(request.tensor), data=request.tensor.data
        )
    if kind == "tile":
        return TileRef(request.tile.path, request.tile.level if request.tile.HasField("level") else None)
    raise InvalidInput("the request has no image: set one of image, tensor or tile", field="source")


def stream_source(header: pb.PredictRequest) -> Callable[[bytes], Payload]:
    """How a stream's chunks become its image, checked from the header before
    any chunk: an encoded image, or the raw bytes of the tensor whose shape
    and dtype the header gives."""
    kind = header.WhichOneof("source")
    if kind is None:
        return EncodedImage
    if kind == "tensor" and not header.tensor.data:
        shape, dtype = tuple(header.tensor.shape), _dtype(header.tensor)
        return lambda data: RawTensor(shape=shape, dtype=dtype, data=data)
    raise InvalidInput(
        "a stream's header carries no pixels: leave its source unset (chunks = "
        "encoded image) or give a tensor's shape and dtype without data",
        field=f"header.{kind}",
    )


_MODES: dict[int, Mode] = {pb.SAMPLE: "sample", pb.TOP_K: "top_k"}


def options(request: pb.PredictRequest) -> PredictOptions:
    if request.n_patches < 0:
        raise InvalidInput(
            f"n_patches must be positive (0 for the model default), got {request.n_patches}",
            field="n_patches",
        )
    mode = _MODES.get(request.mode)
    if mode is None:  # proto3 enums are open: a newer client may send a value this server lacks
        raise InvalidInput(f"unknown sampling mode {request.mode}", field="mode")
    return PredictOptions(
        n_patches=request.n_patches,
        seed=request.seed if request.HasField("seed") else None,
        mode=mode,
        include_crops=request.output.include_patch_crops,
    )


def predict_call(request: pb.PredictRequest, payload: Callable[[Upload], Awaitable[Payload]]) -> PredictCall:
    """The data plane's view of a request (unary, or a stream's header)."""
    return PredictCall(request.model_name, request.model_version, options(request), payload)


def response(served: Served, output: pb.OutputOptions) -> pb.PredictResponse:
    spec, prediction = served.model.spec, served.prediction
    probabilities = prediction.probabilities
    best = int(probabilities.argmax())
    height, width, channels = prediction.image_shape
    attention = pb.AttentionMap(
        height=prediction.attention.shape[0],
        width=prediction.attention.shape[1],
        cell_height=prediction.cell_step[0],
        cell_width=prediction.cell_step[1],
        offset_y=prediction.cell_origin[0],
        offset_x=prediction.cell_origin[1],
    )
    if output.include_attention_map:
        _set_packed_floats(attention, "values", prediction.attention)
    ph, pw = spec.patch_size
    patches = []
    for i, ((y, x), (cy, cx), p) in enumerate(
        zip(
            prediction.offsets.tolist(),
            prediction.cells.tolist(),
            prediction.patch_probabilities.tolist(),
            strict=True,
        )
    ):
        patch = pb.Patch(x=x, y=y, width=pw, height=ph, probability=p, cell_y=cy, cell_x=cx)
        if prediction.crops is not None:
            crop = prediction.crops[i]
            patch.crop.CopyFrom(pb.Tensor(shape=crop.shape, dtype=pb.UINT8, data=crop.tobytes()))
        patches.append(patch)
    return pb.PredictResponse(
        model_name=served.model.name,
        model_version=served.model.version,
        label=spec.classes[best],
        class_index=best,
        probabilities=[
            pb.ClassProbability(name=c, probability=float(p))
            for c, p in zip(spec.classes, probabilities.tolist(), strict=True)
        ],
        attention=attention,
        patches=patches,
        timings=[pb.StageTiming(stage=s, seconds=t) for s, t in prediction.timings.items()],
        seed=prediction.seed,
        image_height=height,
        image_width=width,
        image_channels=channels,
    )


def input_support(support: InputSupport, max_message_bytes: int) -> pb.InputSupport:
    return pb.InputSupport(
        source_kinds=support.source_kinds,
        image_formats=support.image_formats,
        tile_formats=support.tile_formats,
        tensor_dtypes=[pb.DataType.Value(d.upper()) for d in support.tensor_dtypes],
        max_image_pixels=support.max_image_pixels,
        max_image_bytes=support.max_image_bytes,
        max_message_bytes=max_message_bytes,
    )


def metadata(name: str, versions: list[VersionEntry], support: pb.InputSupport) -> pb.ModelMetadata:
    """A model's metadata: its spec from the newest loaded version, all versions' states."""
    message = pb.ModelMetadata(
        name=name,
        inputs=support,
        versions=[
            pb.ModelVersionStatus(
                version=e.version,
                state=_STATES[e.state.value],
                message=e.message,
                load_seconds=e.load_seconds,
            )
            for e in versions
        ],
    )
    loaded = [e.servable for e in versions if e.servable is not None]
    if loaded:
        spec = loaded[-1].spec
        message.classes.extend(spec.classes)
        message.low_scale = spec.low_scale
        message.low_size.extend(spec.low_size or ())
        message.patch_size.extend(spec.patch_size)
        message.n_patches, message.max_patches = spec.n_patches, spec.max_patches
        message.replace, message.channels = spec.replace, spec.channels
        message.receptive_field = spec.receptive_field
    return message
