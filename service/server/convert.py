"""Translation between ats.v1 messages and the data plane's plain records."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np
from google.protobuf.message import Message

from ats_api.v1 import attention_sampling_pb2 as pb
from model_ops.export import TwoLevelSpec
from model_ops.sampling import Mode
from service.dataplane import InputSupport, PredictCall, Served
from service.errors import InvalidInput
from service.models.repository import VersionEntry
from service.pipeline.payload import EncodedImage, Payload, RawTensor, TileRef
from service.pipeline.runner import PredictOptions
from service.pipeline.two_level import TwoLevelPrediction
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
_TISSUE_MASKS = {pb.TISSUE_MASK_OFF: "off", pb.TISSUE_MASK_OTSU: "otsu"}


def options(request: pb.PredictRequest) -> PredictOptions:
    if request.n_patches < 0:
        raise InvalidInput(
            f"n_patches must be positive (0 for the model default), got {request.n_patches}",
            field="n_patches",
        )
    mode = _MODES.get(request.mode)
    if mode is None:  # proto3 enums are open: a newer client may send a value this server lacks
        raise InvalidInput(f"unknown sampling mode {request.mode}", field="mode")
    if request.n_regions < 0:
        raise InvalidInput(
            f"n_regions must be positive (0 for the model default), got {request.n_regions}",
            field="n_regions",
        )
    tissue_mask = _TISSUE_MASKS.get(request.tissue_mask)
    if tissue_mask is None:
        raise InvalidInput(f"unknown tissue mask {request.tissue_mask}", field="tissue_mask")
    return PredictOptions(
        n_patches=request.n_patches,
        seed=request.seed if request.HasField("seed") else None,
        mode=mode,
        include_crops=request.output.include_patch_crops,
        n_regions=request.n_regions,
        tissue_mask=tissue_mask,
        include_coarse_view=request.output.include_coarse_view,
    )


def predict_call(request: pb.PredictRequest, payload: Callable[[Upload], Awaitable[Payload]]) -> PredictCall:
    """The data plane's view of a request (unary, or a stream's header)."""
    return PredictCall(request.model_name, request.model_version, options(request), payload)


def _attention_map(
    values: np.ndarray, step: tuple[float, float], origin: tuple[float, float], include_values: bool
) -> pb.AttentionMap:
    """A map ``values`` (h, w): cell (0, 0) starts at full-resolution ``origin``, cells ``step`` apart."""
    message = pb.AttentionMap(
        height=values.shape[0],
        width=values.shape[1],
        cell_height=step[0],
        cell_width=step[1],
        offset_y=origin[0],
        offset_x=origin[1],
    )
    if include_values:
        _set_packed_floats(message, "values", values)
    return message


def _uint8_tensor(pixels: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=pixels.shape, dtype=pb.UINT8, data=pixels.tobytes())


def _two_level(prediction: TwoLevelPrediction, output: pb.OutputOptions) -> pb.TwoLevelResult:
    """Each region's box and fine map (cells in full-resolution pixels); the coarse view if asked."""
    regions = prediction.regions
    height, width = regions.size
    message = pb.TwoLevelResult(tissue_cells=prediction.tissue_cells)
    for (y, x), (cy, cx), p, fine in zip(
        regions.offsets.tolist(),
        regions.cells.tolist(),
        regions.probabilities.tolist(),
        regions.fine_attention,
        strict=True,
    ):
        origin = (y + regions.fine_cell_origin[0], x + regions.fine_cell_origin[1])
        message.regions.append(
            pb.Region(
                x=x,
                y=y,
                width=width,
                height=height,
                probability=p,
                cell_y=cy,
                cell_x=cx,
                attention=_attention_map(fine, regions.fine_cell_step, origin, output.include_attention_map),
            )
        )
    if prediction.coarse_view is not None:
        message.coarse_view.CopyFrom(_uint8_tensor(prediction.coarse_view))
    return message


def response(served: Served, output: pb.OutputOptions) -> pb.PredictResponse:
    spec, prediction = served.model.spec, served.prediction
    probabilities = prediction.probabilities
    best = int(probabilities.argmax())
    height, width, channels = prediction.image_shape
    attention = _attention_map(
        prediction.attention, prediction.cell_step, prediction.cell_origin, output.include_attention_map
    )
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
            patch.crop.CopyFrom(_uint8_tensor(prediction.crops[i]))
        if isinstance(prediction, TwoLevelPrediction):
            patch.region = int(prediction.patch_regions[i])
        patches.append(patch)
    message = pb.PredictResponse(
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
    if isinstance(prediction, TwoLevelPrediction):
        message.two_level.CopyFrom(_two_level(prediction, output))
    return message


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
        if spec.two_level is not None:
            message.two_level.CopyFrom(_geometry(spec.two_level))
    return message


def _geometry(two_level: TwoLevelSpec) -> pb.TwoLevelGeometry:
    return pb.TwoLevelGeometry(
        region_size=two_level.region_size,
        fine_scale=two_level.fine_scale,
        fine_view_size=two_level.fine_view_shape(),
        n_regions=two_level.n_regions,
        max_regions=two_level.max_regions,
        replace_regions=two_level.replace_regions,
        fine_receptive_field=two_level.fine_receptive_field,
    )
