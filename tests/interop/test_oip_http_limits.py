"""An OIP HTTP/REST infer body is bounded like a gRPC stream: received within
the upload timeouts (504), charged to the upload budget (429), capped at the
largest message (413), each with the protocol's JSON error body, counted
under protocol ``oip.http``; the server keeps serving. The request's
``timeout`` parameter (microseconds, as tritonclient sends it) is the call's
deadline over both transports."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from ats_api.oip.v2 import open_inference_pb2 as oip
from ats_api.oip.v2 import open_inference_pb2_grpc as oip_grpc
from bench.common import ServerProcess
from tests.support import TINY_MODEL, encode_image, metric, random_image, scrape, wait_for

pytestmark = pytest.mark.slow

IDLE_TIMEOUT = 1.0  # --upload-idle-timeout
TOTAL_TIMEOUT = 4.0  # --upload-total-timeout
BUDGET = 1_500_000  # --upload-budget-bytes
MAX_BODY = 1_000_000  # --max-message-bytes
INFER = f"/v2/models/{TINY_MODEL}/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("limits-repo")
    shutil.copytree(tiny_model_dir, root / TINY_MODEL / "1")
    started = ServerProcess(
        root,
        root.parent / "limits-server.log",
        *("--drain-delay", "0", "--queue-timeout", "1"),
        *("--upload-idle-timeout", str(IDLE_TIMEOUT), "--upload-total-timeout", str(TOTAL_TIMEOUT)),
        *("--upload-budget-bytes", str(BUDGET), "--max-message-bytes", str(MAX_BODY)),
        *("--max-uploads", "2"),
    )
    try:
        started.wait_serving()
        yield started
    finally:
        started.kill()


def exchange(
    server: ServerProcess, head: bytes, body_parts: list[tuple[float, bytes]]
) -> tuple[int, dict, float]:
    """Send ``head`` then each body part after its pause, over a raw socket,
    and read the answer: (status, JSON body, seconds from the last byte sent)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as raw:
        raw.sendall(head)
        for pause, part in body_parts:
            time.sleep(pause)
            try:
                raw.sendall(part)
            except OSError:  # the server answered and closed: read what it said
                break
        sent = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < _length(answer):
            chunk = raw.recv(65536)
            if not chunk:
                break
            answer += chunk
    waited = time.monotonic() - sent
    head_text, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    assert b"application/json" in head_text.lower(), head_text
    return status, json.loads(body), waited


def _length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 1 << 30


def request_head(length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {INFER} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n{extra}\r\n"
    ).encode()


def infer_body(parameters: dict | None = None) -> bytes:
    png = encode_image(random_image(48, 64, seed=2))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(png)},
                }
            ],
            "parameters": {"n_patches": 2, **(parameters or {})},
            "outputs": [{"name": "label"}],
        }
    ).encode()
    return header, struct.pack("<I", len(png)) + png


def post(server: ServerProcess, parameters: dict | None = None) -> tuple[int, dict]:
    header, binary = infer_body(parameters)
    extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
    status, answer, _ = exchange(
        server, request_head(len(header) + len(binary), extra), [(0, header + binary)]
    )
    return status, answer


def still_serves(server: ServerProcess) -> None:
    status, answer = post(server)
    assert status == 200, answer
    assert answer["outputs"][0]["name"] == "label"
    wait_for(
        lambda: (
            metric(scrape(server.metrics_url), "ats_uploads_receiving") == 0
            and metric(scrape(server.metrics_url), "ats_upload_bytes_held") == 0
        ),
        timeout=10,
        what="uploads released",
    )


def counted(server: ServerProcess, code: str) -> float:
    return metric(
        scrape(server.metrics_url), "ats_requests_total", protocol="oip.http", rpc="ModelInfer", code=code
    )


def test_a_body_that_stops_arriving_is_504_after_the_idle_timeout(server: ServerProcess) -> None:
    before = counted(server, "DEADLINE_EXCEEDED")
    status, answer, waited = exchange(server, request_head(10_000), [(0, b'{"inputs": [')])
    assert status == 504 and "--upload-idle-timeout" in answer["error"], answer
    assert IDLE_TIMEOUT * 0.5 < waited < IDLE_TIMEOUT + 5
    assert counted(server, "DEADLINE_EXCEEDED") == before + 1
    still_serves(server)


def test_a_body_trickled_past_the_total_timeout_is_504(server: ServerProcess) -> None:
    parts = [(0.4, b" ")] * int(TOTAL_TIMEOUT / 0.4 + 4)  # each pause under the idle timeout
    status, answer, _ = exchange(server, request_head(10_000), parts)
    assert status == 504 and "--upload-total-timeout" in answer["error"], answer
    still_serves(server)


def test_a_declared_body_over_the_largest_message_is_413_before_it_is_read(server: ServerProcess) -> None:
    status, answer, waited = exchange(server, request_head(MAX_BODY + 1), [])
    assert status == 413 and "--max-message-bytes" in answer["error"], answer
    assert waited < IDLE_TIMEOUT  # answered at once, not after waiting for the body
    still_serves(server)


def test_a_chunked_body_over_the_largest_message_is_413(server: ServerProcess) -> None:
    chunk = b"x" * 100_000
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    status, answer, _ = exchange(server, request_head(None), [(0, framed)] * (MAX_BODY // len(chunk) + 2))
    assert status == 413 and "the request body exceeds" in answer["error"], answer
    still_serves(server)


class Trickle:
    """An upload kept alive under the idle timeout: ``first`` bytes of a
    declared body, then one byte every 0.3 s until closed."""

    def __init__(self, server: ServerProcess, length: int, first: bytes) -> None:
        self._socket = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        self._socket.sendall(request_head(length) + first)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.3):
            try:
                self._socket.sendall(b" ")
            except OSError:
                return

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._socket.close()


def test_bodies_over_the_shared_upload_budget_get_429(server: ServerProcess) -> None:
    """One body holds most of the budget while it arrives; another that does not fit is refused."""
    before = counted(server, "RESOURCE_EXHAUSTED")
    holder = Trickle(server, MAX_BODY, b" " * 900_000)
    try:
        wait_for(
            lambda: metric(scrape(server.metrics_url), "ats_upload_bytes_held") >= 900_000,
            timeout=TOTAL_TIMEOUT / 2,
            what="the first body held",
        )
        body = b" " * 700_000  # under --max-message-bytes; with the first, over --upload-budget-bytes
        status, answer, _ = exchange(server, request_head(len(body)), [(0, body)])
        assert status == 429 and "--upload-budget-bytes" in answer["error"], answer
    finally:
        holder.close()
    assert counted(server, "RESOURCE_EXHAUSTED") == before + 1
    still_serves(server)


def test_uploads_over_max_uploads_wait_then_get_429(server: ServerProcess) -> None:
    """Two bodies arriving hold both upload slots; a third waits --queue-timeout, then 429."""
    holders = [Trickle(server, 10_000, b"{") for _ in range(2)]
    try:
        wait_for(
            lambda: metric(scrape(server.metrics_url), "ats_uploads_receiving") == 2,
            timeout=TOTAL_TIMEOUT / 2,
            what="two uploads receiving",
        )
        status, answer = post(server)
        assert status == 429 and "--max-uploads" in answer["error"], answer
    finally:
        for holder in holders:
            holder.close()
    still_serves(server)


def test_the_timeout_parameter_is_the_deadline_over_http(server: ServerProcess) -> None:
    before = counted(server, "DEADLINE_EXCEEDED")
    status, answer = post(server, {"timeout": 1})  # one microsecond: gone before the prediction starts
    assert status == 504 and "deadline" in answer["error"], answer
    assert counted(server, "DEADLINE_EXCEEDED") == before + 1
    status, answer = post(server, {"timeout": 60_000_000})
    assert status == 200, answer
    status, answer = post(server, {"timeout": -5})
    assert status == 400 and "timeout" in answer["error"], answer


def test_the_timeout_parameter_is_the_deadline_over_grpc(server: ServerProcess) -> None:
    png = encode_image(random_image(48, 64, seed=2))
    request = oip.ModelInferRequest(model_name=TINY_MODEL)
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(png)) + png)
    with grpc.insecure_channel(server.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        request.parameters["timeout"].int64_param = 1
        with pytest.raises(grpc.RpcError) as late:
            stub.ModelInfer(request, timeout=60)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        request.parameters["timeout"].int64_param = 60_000_000
        assert stub.ModelInfer(request, timeout=60).model_name == TINY_MODEL
        request.parameters["timeout"].string_param = "soon"
        with pytest.raises(grpc.RpcError) as wrong:
            stub.ModelInfer(request, timeout=60)
        assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
