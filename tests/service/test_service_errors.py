"""Every bad input gets its precise status, a google.rpc.BadRequest naming the
field, and leaves the server answering (checked after each test)."""

from __future__ import annotations

import pathlib
import struct
import zlib

import grpc
import numpy as np
import pytest

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from ats_client import AtsClient, AtsError
from tests.support import encode_image, random_image

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED, UNIMPLEMENTED = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED


@pytest.fixture(scope="module")
def client(ats_server):
    with AtsClient(ats_server.target, retries=0) as client:
        yield client


@pytest.fixture(autouse=True)
def server_still_answers(client):
    yield
    assert client.health() == "SERVING"
    assert client.predict(random_image(64, 64), n_patches=2).label


def refused(call, code: grpc.StatusCode, field: str | None) -> AtsError:
    with pytest.raises(AtsError) as caught:
        call()
    error = caught.value
    assert error.code == code, error
    if field is not None:
        assert field in error.fields, error.fields
        assert error.fields[field] == error.message
    return error


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_corrupt_image(client):
    png = bytearray(encode_image(random_image(64, 64)))
    idat = png.index(b"IDAT") + 4
    png[idat : idat + 2] = b"\xff\xff"  # a zlib stream header no decoder accepts
    error = refused(lambda: client.predict(bytes(png)), INVALID, "image")
    assert "corrupt or truncated PNG" in error.message


def _damaged_headers() -> dict[str, bytes]:
    """Files whose header Pillow recognises and then fails to parse (each came
    back INTERNAL before): cut short, zero-filled, or over Pillow's text limit."""
    png, jpeg = encode_image(random_image(64, 64)), encode_image(random_image(64, 64), "JPEG")
    webp = encode_image(random_image(64, 64), "WEBP")
    ztxt = png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * (2 << 20)))  # inflates past MAX_TEXT_CHUNK
    return {
        "png cut after 16 bytes": png[:16],
        "jpeg cut after 8 bytes": jpeg[:8],
        "webp header then zeros": webp[:16] + bytes(100),
        "png with a 2 MB zTXt chunk": png[:33] + ztxt + png[33:],
    }


@pytest.mark.parametrize("name", list(_damaged_headers()))
def test_damaged_header_is_invalid_not_internal(client, name):
    error = refused(lambda: client.predict(_damaged_headers()[name]), INVALID, "image")
    assert "corrupt or truncated" in error.message


def test_16_bit_grey_png_is_scaled_not_clipped(client):
    """Pillow reads it as I;16 and would clip it to 255; the server keeps each
    sample's high byte, as the patch crops show pixel for pixel."""
    samples = (np.arange(48 * 48, dtype=np.uint32) * 40503 % 65536).astype(np.uint16).reshape(48, 48)
    request = pb.PredictRequest(
        image=encode_image(samples),
        n_patches=4,
        mode=pb.TOP_K,
        output=pb.OutputOptions(include_patch_crops=True),
    )
    response = client.send(request)
    expected = np.pad((samples >> 8).astype(np.uint8), 8)  # pixels outside the image are zeros
    assert len(response.patches) == 4
    for patch in response.patches:
        crop = np.frombuffer(patch.crop.data, np.uint8).reshape(tuple(patch.crop.shape))
        window = expected[patch.y + 8 : patch.y + 8 + patch.height, patch.x + 8 : patch.x + 8 + patch.width]
        np.testing.assert_array_equal(crop, np.repeat(window[..., None], 3, axis=-1))


@pytest.mark.parametrize(("dtype", "mode"), [(np.float32, "F"), (np.int32, "I")])
def test_32_bit_images_are_refused_naming_their_mode(client, dtype, mode):
    tiff = encode_image(np.ones((16, 16), dtype), "TIFF")  # Pillow writes mode F or I
    error = refused(lambda: client.predict(tiff), INVALID, "image")
    assert f"mode {mode}" in error.message


def test_unknown_enum_values_are_invalid_not_internal(client):
    """proto3 enums are open: a number the server does not know is the client's error."""
    tensor = pb.Tensor(shape=[64, 64, 3], dtype=99, data=bytes(64 * 64 * 3))
    refused(lambda: client.send(pb.PredictRequest(tensor=tensor)), INVALID, "tensor.dtype")
    png = encode_image(random_image(64, 64))
    refused(lambda: client.send(pb.PredictRequest(image=png, mode=7)), INVALID, "mode")


def test_truncated_image(client):
    png = encode_image(random_image(128, 128))
    refused(lambda: client.predict(png[: len(png) // 2]), INVALID, "image")


def test_unknown_format(client):
    gif = encode_image(random_image(32, 32), "GIF")
    error = refused(lambda: client.predict(gif), INVALID, "image")
    assert "PNG" in error.message and "WEBP" in error.message
    refused(lambda: client.predict(b"plain text, not an image"), INVALID, "image")


def test_empty_image(client):
    refused(lambda: client.send(pb.PredictRequest(image=b"")), INVALID, "image")


def test_no_image_at_all(client):
    refused(lambda: client.send(pb.PredictRequest(n_patches=2)), INVALID, "source")


@pytest.mark.parametrize("shape", [(64, 64, 2), (64, 64, 1), (4096,), (64, 0, 3), (2, 32, 32, 3)])
def test_wrong_tensor_shape(client, shape):
    size = int(np.prod(shape))
    tensor = pb.Tensor(shape=shape, dtype=pb.UINT8, data=bytes(size))
    refused(lambda: client.send(pb.PredictRequest(tensor=tensor)), INVALID, "tensor.shape")


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_wrong_tensor_dtype(client, dtype):
    error = refused(lambda: client.predict(np.zeros((64, 64, 3), dtype)), INVALID, "tensor.dtype")
    assert "uint8" in error.message


def test_tensor_data_of_the_wrong_length(client):
    tensor = pb.Tensor(shape=[64, 64, 3], dtype=pb.UINT8, data=bytes(64 * 64 * 3 - 1))
    refused(lambda: client.send(pb.PredictRequest(tensor=tensor)), INVALID, "tensor.data")


@pytest.mark.parametrize("n_patches", [65, -1])
def test_n_patches_out_of_range(client, n_patches):
    error = refused(lambda: client.predict(random_image(64, 64), n_patches=n_patches), INVALID, "n_patches")
    assert str(n_patches) in error.message


def test_more_patches_than_cells_without_replacement(client):
    # 16x16 at scale 1/8: a 2x2 attention map, 4 cells, drawn without replacement
    error = refused(lambda: client.predict(random_image(16, 16), n_patches=5), INVALID, "n_patches")
    assert "4 attention cells" in error.message


def test_unknown_model(client):
    refused(lambda: client.predict(random_image(64, 64), model="nope"), NOT_FOUND, "model_name")
    refused(lambda: client.metadata("nope"), NOT_FOUND, "model_name")


def test_unknown_version(client):
    error = refused(lambda: client.predict(random_image(64, 64), version=7), NOT_FOUND, "model_version")
    assert "ready: [1]" in error.message


def test_decompression_bomb_is_refused_from_the_header(client):
    """A PNG claiming 60000x60000 pixels whose data is cut short: refused for
    its size, not for its truncation, so the check happened before decoding."""
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(bytes(60001)))
    error = refused(lambda: client.predict(bomb), EXHAUSTED, "image")
    assert "60000x60000" in error.message and "40000000" in error.message


def test_tensor_over_the_pixel_limit(client):
    tensor = pb.Tensor(shape=[8000, 8000, 3], dtype=pb.UINT8)  # checked before its (absent) data
    refused(lambda: client.send(pb.PredictRequest(tensor=tensor)), EXHAUSTED, "tensor.shape")


def test_stream_over_the_byte_limit(client):
    oversized = bytes(17 << 20)  # the shared server allows 16 MiB
    error = refused(lambda: client.predict(oversized), EXHAUSTED, "chunk")
    assert str(16 << 20) in error.message


def test_tile_reference_is_not_implemented_yet(client):
    error = refused(lambda: client.predict_tile("slides/a.tiff"), UNIMPLEMENTED, "tile")
    assert "'tile' sources are not supported" in error.message and "image, tensor" in error.message


def _raw_stream(target: str, messages: list[pb.PredictStreamRequest]) -> None:
    with grpc.insecure_channel(target) as channel:
        try:
            pb_grpc.AttentionSamplingStub(channel).PredictStream(iter(messages), timeout=30)
        except grpc.RpcError as error:
            raise AtsError.from_rpc_error(error) from None


def test_stream_must_start_with_its_header(ats_server):
    refused(
        lambda: _raw_stream(ats_server.target, [pb.PredictStreamRequest(chunk=b"\x89PNG")]), INVALID, "header"
    )
    refused(lambda: _raw_stream(ats_server.target, []), INVALID, "header")


def test_stream_header_carries_no_pixels(ats_server):
    png = encode_image(random_image(64, 64))
    messages = [
        pb.PredictStreamRequest(header=pb.PredictRequest(image=png)),
        pb.PredictStreamRequest(chunk=png),
    ]
    refused(lambda: _raw_stream(ats_server.target, messages), INVALID, "header.image")


def test_second_header_in_a_stream(ats_server):
    header = pb.PredictStreamRequest(header=pb.PredictRequest())
    refused(lambda: _raw_stream(ats_server.target, [header, header]), INVALID, "header")


def _resident_mb(pid: int) -> float:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


@pytest.mark.slow
def test_memory_returns_after_refused_large_images(client, ats_server):
    """Truncated 12 MP images are decoded into full buffers before they fail:
    those buffers must be freed, so resident memory does not climb with each one."""
    jpeg = encode_image(random_image(3000, 4000), "JPEG", quality=90)
    truncated = jpeg[: len(jpeg) * 3 // 4]
    pid = ats_server.process.pid

    def refuse(times: int) -> None:
        for _ in range(times):
            refused(lambda: client.predict(truncated), INVALID, "image")

    refuse(4)  # allocator pools and caches reach their working size
    settled = _resident_mb(pid)
    refuse(24)  # 24 x 36 MB of pixels if nothing were freed
    grown = _resident_mb(pid) - settled
    assert grown < 150, f"resident memory grew {grown:.0f} MB over 24 refused images"


@pytest.mark.parametrize(
    ("method", "streaming"),
    [
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
        ("/ats.v1.AttentionSampling/Predict", False),
        ("/ats.v1.AttentionSampling/PredictStream", True),
        ("/ats.v1.AttentionSampling/ListModels", False),
        ("/ats.v1.AttentionSampling/GetModelMetadata", False),
    ],
)
def test_messages_that_do_not_parse_are_invalid_for_every_service(ats_server, method, streaming):
    """Bytes that are no protobuf message (a field tag of number 0) sent to
    every service, ours and the stock ones: INVALID_ARGUMENT, never UNKNOWN
    with the parser's exception text."""
    garbage = b"\x00\x01\x02"
    with grpc.insecure_channel(ats_server.target) as channel, pytest.raises(grpc.RpcError) as caught:
        if method.endswith("ServerReflectionInfo"):
            list(channel.stream_stream(method)(iter([garbage]), timeout=30))
        elif streaming:
            channel.stream_unary(method)(iter([garbage]), timeout=30)
        elif method.endswith("Watch"):
            list(channel.unary_stream(method)(garbage, timeout=30))
        else:
            channel.unary_unary(method)(garbage, timeout=30)
    assert caught.value.code() == INVALID, caught.value
    assert "does not parse" in caught.value.details()
