"""Clients that try to take the server with little effort: streams that never
send, uploads that stall, headers that promise too much, connections that eat
descriptors. A real ats-serve process on loopback, real gRPC channels."""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterator

import grpc
import pytest

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from ats_client import AtsClient, AtsError
from tests.support import encode_image, metric, random_image, scrape, wait_for


def stalled(header: pb.PredictRequest | None, release: threading.Event) -> Iterator[pb.PredictStreamRequest]:
    """A stream that sends its header (or nothing at all) and then waits for ``release``."""
    if header is not None:
        yield pb.PredictStreamRequest(header=header)
    release.wait(120)


FLAGS = ("--max-uploads", "--upload-idle-timeout", "--upload-header-timeout")


def health(client: AtsClient) -> str:
    try:
        return client.health()
    except AtsError as error:
        return error.code.name


@pytest.fixture()
def server(start_server, make_repository):
    return start_server(
        make_repository(),
        "--upload-header-timeout",
        "5",
        "--upload-idle-timeout",
        "5",
        "--max-uploads",
        "8",
        "--queue-timeout",
        "0.5",
    )


def test_idle_and_stalled_streams_block_no_one_and_time_out(server):
    release = threading.Event()
    small = random_image(64, 64)
    header = pb.PredictRequest(n_patches=2)
    try:
        with grpc.insecure_channel(server.target) as stalling, grpc.insecure_channel(server.target) as idle:
            headed = [
                pb_grpc.AttentionSamplingStub(stalling).PredictStream.future(
                    stalled(header, release), timeout=60
                )
                for _ in range(16)
            ]
            wait_for(
                lambda: metric(scrape(server.metrics_url), "ats_uploads_receiving") == 8,
                timeout=30,
                what="every upload slot taken",
            )
            silent = [
                pb_grpc.AttentionSamplingStub(idle).PredictStream.future(stalled(None, release), timeout=60)
                for _ in range(64)
            ]
            with AtsClient(server.target, retries=0, timeout=1.0) as other:
                # another client is served within a second, and health stays SERVING
                assert other.predict(small, n_patches=2).label
                assert health(other) == "SERVING"
            stalled_ends = [(f.exception().code(), f.exception().details()) for f in headed]
            silent_ends = [(f.exception().code(), f.exception().details()) for f in silent]
    finally:
        release.set()
    # the server gave up on every stalled stream: no next chunk, or no upload slot...
    assert (
        sorted(flag for code, details in stalled_ends for flag in FLAGS if flag in details)
        == ["--max-uploads"] * 8 + ["--upload-idle-timeout"] * 8
    )
    # ...or no header; streams past the per-connection limit were refused outright (REFUSED_STREAM)
    timed_out = [d for c, d in silent_ends if c == grpc.StatusCode.DEADLINE_EXCEEDED]
    refused = [d for c, d in silent_ends if c == grpc.StatusCode.UNAVAILABLE]
    assert len(timed_out) + len(refused) == 64 and timed_out
    assert all("--upload-header-timeout" in d for d in timed_out)
    assert all("RST_STREAM" in d for d in refused)
    samples = scrape(server.metrics_url)
    assert metric(samples, "ats_uploads_receiving") == 0
    assert metric(samples, "ats_upload_bytes_held") == 0
    assert metric(samples, "ats_requests_total", code="INTERNAL") == 0
    with grpc.insecure_channel(server.target) as channel:  # uploads work again
        upload = [pb.PredictStreamRequest(header=header), pb.PredictStreamRequest(chunk=encode_image(small))]
        assert pb_grpc.AttentionSamplingStub(channel).PredictStream(iter(upload), timeout=10).label


def test_a_streamed_tensor_is_refused_from_its_header(server):
    """17320 x 17320 x 3 declared: refused before a single chunk is sent."""
    release = threading.Event()
    header = pb.PredictRequest(tensor=pb.Tensor(shape=[17320, 17320, 3], dtype=pb.UINT8))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AttentionSamplingStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.PredictStream(stalled(header, release), timeout=30)
    finally:
        release.set()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "declared tensor" in refused.value.details()


def test_health_is_not_serving_while_descriptors_run_out_and_recovers(server):
    """Each client connection costs the server a descriptor: with the limit
    lowered under the server, enough idle connections make health
    NOT_SERVING; closing them makes it SERVING again."""
    pid = server.process.pid
    in_use = open_fds(pid)
    limit = in_use + 60
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    channels = []
    try:
        with AtsClient(server.target, retries=0, timeout=5) as probe:
            assert health(probe) == "SERVING"
            while open_fds(pid) < 0.95 * limit and len(channels) < 200:
                channel = grpc.insecure_channel(
                    server.target, options=[("grpc.use_local_subchannel_pool", 1)]
                )
                grpc.channel_ready_future(channel).result(timeout=10)
                channels.append(channel)
            wait_for(lambda: health(probe) == "NOT_SERVING", timeout=10, what="NOT_SERVING at the fd limit")
            for channel in channels:
                channel.close()
            channels.clear()
            wait_for(
                lambda: health(probe) == "SERVING", timeout=10, what="SERVING after the connections closed"
            )
    finally:
        for channel in channels:
            channel.close()
    assert "file descriptors in use" in server.log()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
