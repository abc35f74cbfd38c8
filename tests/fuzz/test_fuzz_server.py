"""A storm of malformed requests against a real ``ats-serve`` on loopback:
damaged uploads (unary and streamed), malformed streams and tensors,
protobuf fields at their extremes, and random damage to the serialized
messages themselves, sent as bytes so the server does the parsing. Every
answer's code must be one the service documents (never INTERNAL or UNKNOWN),
counted by code in the failure message; afterwards the server must still be
SERVING and answer a valid request exactly as it did before the storm.

The bulk of the decode fuzzing runs in process (test_fuzz_decode.py); these
are about 1,300 representative requests through gRPC, the front end and the
data plane."""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable, Iterable, Iterator

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ats_api.v1 import attention_sampling_pb2 as pb
from tests.fuzz import apply, header_forgeries, mutate
from tests.fuzz.atheris_decode import picture, seeds
from tests.support import TINY_MODEL, encode_image

SEED = 20240612
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
DOCUMENTED = {
    OK,
    INVALID,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
PREDICT = "/ats.v1.AttentionSampling/Predict"
PREDICT_STREAM = "/ats.v1.AttentionSampling/PredictStream"
TIMEOUT = 30.0


class Storm:
    """Sends serialized requests to one server and tallies each answer's code;
    keeps the first request of each code outside the documented set."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
        # no serializers: requests go as the bytes given, and the server parses them
        self.unary = self.channel.unary_unary(PREDICT)
        self.stream = self.channel.stream_unary(PREDICT_STREAM)
        self.codes: collections.Counter[str] = collections.Counter()
        self.wrong: dict[str, str] = {}
        self.before = self.unary(valid_request().SerializeToString(), timeout=TIMEOUT)

    def predict(self, label: str, request: Message | bytes) -> grpc.StatusCode:
        data = request if isinstance(request, bytes) else request.SerializeToString()
        return self._tally(label, lambda: self.unary(data, timeout=TIMEOUT))

    def predict_stream(self, label: str, messages: Iterable[Message | bytes]) -> grpc.StatusCode:
        parts = [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]
        return self._tally(label, lambda: self.stream(iter(parts), timeout=TIMEOUT))

    def _tally(self, label: str, call: Callable[[], bytes]) -> grpc.StatusCode:
        try:
            call()
            code, details = OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        self.codes[code.name] += 1
        if code not in DOCUMENTED:
            self.wrong.setdefault(code.name, f"{label}: {code.name} {details[:300]!r}")
        return code

    def check(self, at_least: int) -> None:
        """Every answer documented, both refusals and answers among them, and the
        server still SERVING with the same answer to a valid request as before."""
        assert not self.wrong, (
            f"answers by code {dict(self.codes)}; outside the documented set:\n"
            + "\n".join(self.wrong.values())
        )
        assert self.codes.total() >= at_least and self.codes[INVALID.name] > 0, self.codes
        health = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        before, after = (
            pb.PredictResponse.FromString(self.before),
            pb.PredictResponse.FromString(self.unary(valid_request().SerializeToString(), timeout=TIMEOUT)),
        )
        for answer in (before, after):
            answer.ClearField("timings")
        assert after == before and after.label

    def close(self) -> None:
        self.channel.close()


def _parses(data: bytes, kind: type[Message]) -> bool:
    try:
        kind.FromString(data)
    except DecodeError:
        return False
    return True


def png(height: int = 32, width: int = 40) -> bytes:
    return encode_image(picture(height, width))


def valid_request(**fields: object) -> pb.PredictRequest:
    return pb.PredictRequest(**{"image": png(), "n_patches": 2, "seed": 3, "mode": pb.TOP_K, **fields})


def chunked(data: bytes, rng: random.Random) -> Iterator[pb.PredictStreamRequest]:
    """``data`` in random-sized chunks, empty ones included."""
    at = 0
    while at < len(data):
        size = rng.choice((0, 1, 7, 100, 1000, 1 << 16))
        yield pb.PredictStreamRequest(chunk=data[at : at + size])
        at += size


def header(request: pb.PredictRequest | None = None) -> pb.PredictStreamRequest:
    return pb.PredictStreamRequest(header=request or pb.PredictRequest(n_patches=2, seed=3))


@pytest.fixture()
def storm(ats_server) -> Iterator[Storm]:
    storm = Storm(ats_server.target)
    yield storm
    storm.close()


def _mutated_images(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    files = seeds()
    names = sorted(files)
    for i in range(count):
        name = names[i % len(names)]
        yield f"{name} mutation {i}", mutate(files[name], rng)


def test_damaged_uploads(storm):
    rng = random.Random(SEED)
    for label, data in _mutated_images(rng, 160):
        storm.predict(label, pb.PredictRequest(image=data, n_patches=2, seed=1))
    for label, data in _mutated_images(rng, 48):
        storm.predict_stream(label, [header(), *chunked(data, rng)])
    storm.check(at_least=208)


# Every header forgery of one file per format (about 700), as uploads.
FORGED = ("tiff-rgb.tif", "png-grey16.png", "jpeg-rgb.jpg", "webp-alpha.webp")


def test_forged_headers(storm):
    files = seeds()
    for name in FORGED:
        for at, new in header_forgeries(files[name]):
            request = pb.PredictRequest(image=apply(files[name], (at, new)), n_patches=2, seed=1)
            storm.predict(f"{name} with {new.hex()} at byte {at}", request)
    storm.check(at_least=700)


def _tensor(rng: random.Random) -> pb.Tensor:
    sizes = (-(2**63), -(2**31), -1, 0, 1, 3, 2**31, 2**63 - 1)
    rank = rng.choice((0, 1, 2, 3, 3, 3, 4))
    shape = [rng.choice(sizes) if rng.random() < 0.3 else rng.randint(1, 40) for _ in range(rank)]
    dtype = rng.choice((pb.UINT8, pb.UINT8, pb.UINT16, pb.FLOAT32, 3, 99, -1))
    product = math.prod(shape) if shape else 0
    length = product + rng.choice((0, -1, 1)) if 0 < product < 1 << 16 else rng.randint(0, 5000)
    return pb.Tensor(shape=shape, dtype=dtype, data=rng.randbytes(max(0, length)))


def test_malformed_tensors(storm):
    rng = random.Random(SEED + 1)
    for i in range(60):
        storm.predict(f"tensor {i}", pb.PredictRequest(tensor=_tensor(rng), n_patches=2))
    for i in range(20):
        tensor = _tensor(rng)
        data, tensor.data = tensor.data, b""
        storm.predict_stream(
            f"streamed tensor {i}", [header(pb.PredictRequest(tensor=tensor)), *chunked(data, rng)]
        )
    storm.check(at_least=80)


def test_malformed_streams(storm):
    image = png()
    tensor_header = pb.PredictRequest(tensor=pb.Tensor(shape=[32, 40, 3], dtype=pb.UINT8))
    streams: dict[str, list[pb.PredictStreamRequest]] = {
        "no message": [],
        "chunk first": [pb.PredictStreamRequest(chunk=image)],
        "header only": [header()],
        "two headers": [header(), header(), pb.PredictStreamRequest(chunk=image)],
        "header after a chunk": [header(), pb.PredictStreamRequest(chunk=image), header()],
        "header with pixels": [header(valid_request()), pb.PredictStreamRequest(chunk=image)],
        "header with tensor data": [
            header(pb.PredictRequest(tensor=pb.Tensor(shape=[1, 1, 3], data=b"abc"))),
            pb.PredictStreamRequest(chunk=b"abc"),
        ],
        "tensor one byte short": [
            header(tensor_header),
            pb.PredictStreamRequest(chunk=bytes(32 * 40 * 3 - 1)),
        ],
        "tile header": [header(pb.PredictRequest(tile=pb.TileReference(path="a.tif")))],
        "a thousand empty chunks": [header(), *[pb.PredictStreamRequest(chunk=b"")] * 1000],
        "empty messages": [pb.PredictStreamRequest(), pb.PredictStreamRequest()],
        "header with unknown mode": [header(pb.PredictRequest(mode=9)), pb.PredictStreamRequest(chunk=image)],
    }
    for label, messages in streams.items():
        storm.predict_stream(label, messages)
    storm.check(at_least=12)


EXTREMES: dict[str, list[object]] = {
    "mode": [-(2**31), -1, 2, 7, 2**31 - 1],
    "n_patches": [-(2**31), -1, 0, 1, 64, 65, 2**31 - 1],
    "model_version": [-(2**63), -1, 0, 1, 2, 2**63 - 1],
    "seed": [-(2**63), -1, 0, 2**63 - 1],
    "model_name": ["", TINY_MODEL, "nope", "x" * 100_000, "\u202e\u0000\U0001f600", "../" * 50],
}


def test_fields_at_their_extremes(storm):
    for field, values in EXTREMES.items():
        for value in values:
            storm.predict(f"{field}={str(value)[:40]}", valid_request(**{field: value}))
    output = pb.OutputOptions(include_attention_map=True, include_patch_crops=True)
    storm.predict("every output", valid_request(output=output))
    for height, width in ((1, 1), (1, 4000), (4000, 1), (7, 9)):
        storm.predict(f"{height}x{width} image", pb.PredictRequest(image=png(height, width), n_patches=1))
    storm.check(at_least=33)


def test_damaged_protobuf_messages(storm):
    """Random damage to the serialized messages, parsed by the server: those
    that no longer parse are INVALID_ARGUMENT, the rest any documented code."""
    rng = random.Random(SEED + 2)
    unary = valid_request(output=pb.OutputOptions(include_attention_map=True)).SerializeToString()
    unparsable: collections.Counter[str] = collections.Counter()
    for i in range(120):
        damaged = mutate(unary, rng)
        code = storm.predict(f"damaged PredictRequest {i}: {damaged.hex()[:200]}", damaged)
        if not _parses(damaged, pb.PredictRequest):
            unparsable[code.name] += 1
    first = header().SerializeToString()
    chunks = [m.SerializeToString() for m in chunked(png(), rng)]
    for i in range(40):
        parts = [first, *chunks]
        hit = rng.randrange(len(parts))
        parts[hit] = mutate(parts[hit], rng)
        code = storm.predict_stream(f"damaged stream {i}, message {hit}: {parts[hit].hex()[:200]}", parts)
        if not _parses(parts[hit], pb.PredictStreamRequest):
            unparsable[code.name] += 1
    storm.check(at_least=160)
    assert set(unparsable) == {INVALID.name}, f"answers to messages that do not parse: {dict(unparsable)}"
    assert 20 < unparsable.total() < 140, f"{unparsable.total()} of 160: the damage is too mild or too harsh"


def test_tile_references_at_their_extremes(start_server, make_repository, tmp_path):
    """Levels and paths at their extremes, on a server whose --data-root holds
    a pyramid and a PNG, so they reach the tile readers."""
    root = tmp_path / "slides"
    root.mkdir()
    files = seeds()
    (root / "pyramid.ome.tif").write_bytes(files["ome-pyramid.ome.tif"])
    (root / "picture.png").write_bytes(files["png-rgb.png"])
    (tmp_path / "outside.png").write_bytes(files["png-rgb.png"])
    server = start_server(make_repository(), "--data-root", str(root))
    storm = Storm(server.target)
    paths = [
        "pyramid.ome.tif",
        "picture.png",
        "missing.tif",
        "../outside.png",
        "/etc/hostname",
        "",
        ".",
        "a\0b",
    ]
    levels: list[int | None] = [None, -(2**31), -1, 0, 1, 2, 30, 2**31 - 1]
    try:
        for path in [*paths, "x" * 5000]:
            for level in levels:
                tile = pb.TileReference(path=path, level=level)
                storm.predict(f"tile {path[:40]!r} level {level}", pb.PredictRequest(tile=tile, n_patches=2))
        storm.check(at_least=72)
        assert storm.codes[OK.name] >= 4 and storm.codes[grpc.StatusCode.NOT_FOUND.name] > 0, storm.codes
    finally:
        storm.close()
