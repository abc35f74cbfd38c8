"""TensorFlow Serving's gRPC API, ``tensorflow.serving.PredictionService``
(Predict, GetModelMetadata) and ``ModelService`` (GetModelStatus), with the
message definitions TF Serving's users already have (the
``tensorflow-serving-api`` package): protocol only, through the same data
plane as ats.v1 and the Open Inference Protocol.

The model has one signature, ``predict_image`` (the empty name means it):
input ``image``, DT_STRING (one encoded file in ``string_val``) or DT_UINT8
[H, W, C] (``tensor_content`` or ``int_val``), and optional scalar inputs
``n_patches``, ``seed`` (integers) and ``mode`` (string ``sample``/``top_k``);
outputs as the Open Inference Protocol's (``oip_convert.OUTPUTS``).
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (  # type: ignore[import-untyped]
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

from model_ops.sampling import Mode
from service.dataplane import TFSERVING, DataPlane, Endpoint, PredictCall, Served
from service.errors import InvalidInput, ServiceError, Unsupported, clip
from service.pipeline.payload import EncodedImage, Payload, RawTensor
from service.pipeline.runner import PredictOptions
from service.server import oip_convert, status, vocabulary
from service.server.registration import parsed
from service.uploads import Upload

SIGNATURE = "predict_image"
PREDICT = Endpoint(TFSERVING, "Predict")
GET_MODEL_METADATA = Endpoint(TFSERVING, "GetModelMetadata")
GET_MODEL_STATUS = Endpoint(TFSERVING, "GetModelStatus")
# The services this module serves, by name, for registration and reflection.
TFS_SERVICES = {
    "PredictionService": prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    "ModelService": model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
}
_DTYPES = {"FP32": types_pb2.DT_FLOAT, "INT32": types_pb2.DT_INT32, "BYTES": types_pb2.DT_STRING}
_STATES = {
    "LOADING": get_model_status_pb2.ModelVersionStatus.LOADING,
    "READY": get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    "UNLOADING": get_model_status_pb2.ModelVersionStatus.UNLOADING,
    "FAILED": get_model_status_pb2.ModelVersionStatus.END,
}
_MODES: dict[str, Mode] = {"sample": "sample", "top_k": "top_k"}
_UNKNOWN = 2  # tensorflow.error.Code.UNKNOWN: a version that failed to load


def _model(spec: Any) -> tuple[str, int]:
    """(name, version: 0 for the newest ready one) of a ModelSpec."""
    if spec.version_label:
        raise InvalidInput(
            "version labels are not supported: give model_spec.version", field="model_spec.version_label"
        )
    if spec.signature_name not in ("", SIGNATURE):
        raise InvalidInput(
            f"unknown signature {clip(spec.signature_name)}; this model has {SIGNATURE!r}",
            field="model_spec.signature_name",
        )
    return spec.name, spec.version.value if spec.HasField("version") else 0


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else str(dtype)


def _scalar(inputs: Any, name: str, dtypes: tuple[int, ...]) -> Any:
    """The one value of an optional scalar input, None when absent."""
    if name not in inputs:
        return None
    tensor = inputs[name]
    values = {
        types_pb2.DT_INT32: tensor.int_val,
        types_pb2.DT_INT64: tensor.int64_val,
        types_pb2.DT_STRING: tensor.string_val,
    }.get(tensor.dtype)
    if tensor.dtype not in dtypes or values is None or len(values) != 1:
        raise InvalidInput(
            f"input {name} must be one value of {[_dtype_name(d) for d in dtypes]}",
            field=f"inputs.{name}",
        )
    return values[0]


def _options(inputs: Any) -> PredictOptions:
    n_patches = _scalar(inputs, "n_patches", (types_pb2.DT_INT32, types_pb2.DT_INT64)) or 0
    seed = _scalar(inputs, "seed", (types_pb2.DT_INT32, types_pb2.DT_INT64))
    mode = _scalar(inputs, "mode", (types_pb2.DT_STRING,))
    mode = "sample" if mode is None else mode.decode("utf-8", "replace")
    if n_patches < 0:
        raise InvalidInput(
            f"n_patches must be positive (0 for the model default), got {n_patches}", field="inputs.n_patches"
        )
    if mode not in _MODES:
        raise InvalidInput(f"mode must be 'sample' or 'top_k', got {clip(mode)}", field="inputs.mode")
    return PredictOptions(n_patches=n_patches, seed=seed, mode=_MODES[mode])


def _image(inputs: Any) -> EncodedImage | RawTensor:
    if "image" not in inputs:
        raise InvalidInput("the request has no input 'image'", field="inputs")
    tensor = inputs["image"]
    if tensor.dtype == types_pb2.DT_STRING:
        if len(tensor.string_val) != 1:
            raise InvalidInput(
                f"image holds {len(tensor.string_val)} strings; it takes one encoded file",
                field="inputs.image",
            )
        return EncodedImage(tensor.string_val[0])
    if tensor.dtype != types_pb2.DT_UINT8:
        raise InvalidInput(
            f"image must be DT_STRING (an encoded file) or DT_UINT8, got {_dtype_name(tensor.dtype)}",
            field="inputs.image.dtype",
        )
    shape = tuple(d.size for d in tensor.tensor_shape.dim)
    if len(shape) == 4 and shape[0] == 1:  # a batch of one
        shape = shape[1:]
    if len(shape) != 3 or min(shape) <= 0:
        raise InvalidInput(
            f"image must have shape [H, W, C], got {list(shape)[:8]}", field="inputs.image.tensor_shape"
        )
    if tensor.tensor_content:
        data = tensor.tensor_content
    else:
        values = np.asarray(tensor.int_val, np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise InvalidInput("image values must be 0-255 (DT_UINT8)", field="inputs.image.int_val")
        data = values.astype(np.uint8).tobytes()
    return RawTensor(shape=shape, dtype="uint8", data=data)


def _tensor(value: np.ndarray | list[bytes], datatype: str) -> tensor_pb2.TensorProto:
    if isinstance(value, list):
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(value))]
        )
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=value)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in value.shape]
    )
    return tensor_pb2.TensorProto(dtype=_DTYPES[datatype], tensor_shape=shape, tensor_content=value.tobytes())


def _outputs(request: Any) -> tuple[str, ...]:
    names = tuple(request.output_filter) or tuple(spec.name for spec in oip_convert.OUTPUTS)
    known = {spec.name for spec in oip_convert.OUTPUTS}
    for name in names:
        if name not in known:
            raise InvalidInput(
                f"unknown output {clip(name)}; this model has {', '.join(sorted(known))}",
                field="output_filter",
            )
    return names


def _signature() -> meta_graph_pb2.SignatureDef:
    def info(spec: oip_convert.TensorSpec, dtype: int) -> meta_graph_pb2.TensorInfo:
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in spec.shape]
        return meta_graph_pb2.TensorInfo(
            name=spec.name, dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims)
        )

    image = oip_convert.TensorSpec("image", "BYTES", (-1, -1, -1))  # a string, or uint8 [H, W, C]
    inputs = {"image": info(image, types_pb2.DT_STRING)}
    for name, dtype in (
        ("n_patches", types_pb2.DT_INT64),
        ("seed", types_pb2.DT_INT64),
        ("mode", types_pb2.DT_STRING),
    ):
        inputs[name] = info(oip_convert.TensorSpec(name, "", ()), dtype)
    outputs = {spec.name: info(spec, _DTYPES[spec.datatype]) for spec in oip_convert.OUTPUTS}
    return meta_graph_pb2.SignatureDef(
        inputs=inputs, outputs=outputs, method_name="tensorflow/serving/predict"
    )


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def payload(upload: Upload) -> Payload:
            image = _image(request.inputs)
            upload.hold(len(image.data))
            return image

        async def read() -> PredictCall:
            name, version = _model(parsed(request).model_spec)
            _outputs(request)
            return PredictCall(name, version, _options(request.inputs), payload)

        try:
            served: Served = await self._plane.predict(PREDICT, read, context)
        except ServiceError as err:
            await status.abort(context, vocabulary.TFSERVING.translate(err))
        values = oip_convert.output_values(served)
        datatypes = {spec.name: spec.datatype for spec in oip_convert.OUTPUTS}
        response = predict_pb2.PredictResponse()
        response.model_spec.name = served.model.name
        response.model_spec.version.value = served.model.version
        response.model_spec.signature_name = SIGNATURE
        for name in _outputs(request):
            response.outputs[name].CopyFrom(_tensor(values[name], datatypes[name]))
        return response

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            name, version = _model(parsed(request).model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise InvalidInput("metadata_field must be ['signature_def']", field="metadata_field")
            name, versions = self._plane.model_versions(GET_MODEL_METADATA, name, version)
        except ServiceError as err:
            await status.abort(context, vocabulary.TFSERVING.translate(err))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = version or max((e.version for e in versions), default=0)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[SIGNATURE].CopyFrom(_signature())
        packed = any_pb2.Any()
        packed.Pack(signatures)
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    async def _unsupported(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await status.abort(context, Unsupported("this model serves Predict only (signature predict_image)"))

    Classify = Regress = MultiInference = _unsupported


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            name, version = _model(parsed(request).model_spec)
            name, versions = self._plane.model_versions(GET_MODEL_STATUS, name, version)
            chosen = [e for e in versions if version in (0, e.version)]
        except ServiceError as err:
            await status.abort(context, vocabulary.TFSERVING.translate(err))
        response = get_model_status_pb2.GetModelStatusResponse()
        for entry in chosen:
            version_status = response.model_version_status.add(
                version=entry.version, state=_STATES[entry.state.value]
            )
            if entry.state.value == "FAILED":
                version_status.status.error_code = _UNKNOWN
                version_status.status.error_message = entry.message
        return response

    async def HandleReloadConfigRequest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await status.abort(
            context, Unsupported("the model repository is scanned, not configured: copy versions in")
        )
