"""Server lifecycle with real processes: health following model readiness, a
version swap under load, SIGTERM drain, capacity limits, deadlines and
cancellation."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections.abc import Iterator

import grpc
import pytest

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from ats_client import AtsClient, AtsError
from tests.support import encode_image, metric, random_image, scrape, wait_for

pytestmark = pytest.mark.slow


def health(client: AtsClient, service: str = "") -> str:
    try:
        return client.health(service)
    except AtsError as error:
        return error.code.name  # NOT_FOUND for a service health never heard of; UNAVAILABLE when closed


def place(source, destination) -> None:
    """Copy a version next to the repository, then rename it in: the poller never sees half a copy."""
    staging = destination.parent.parent.parent / f"staging-{destination.parent.name}-{destination.name}"
    shutil.copytree(source, staging)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(destination)


def held_stream(
    header: pb.PredictRequest, payload: bytes, release: threading.Event
) -> Iterator[pb.PredictStreamRequest]:
    """A PredictStream upload that stops after its header until ``release`` is set."""
    yield pb.PredictStreamRequest(header=header)
    release.wait(60)
    yield pb.PredictStreamRequest(chunk=payload)


def versions(client: AtsClient) -> list[tuple[int, int]]:
    try:
        return [(v.version, v.state) for v in client.metadata("tiny").versions]
    except AtsError:
        return []


def test_health_follows_model_readiness(start_server, tmp_path, tiny_model_dir):
    repo = tmp_path / "repo"
    repo.mkdir()
    server = start_server(repo, "--poll-interval", "0.2", "--log-format", "json", wait=False)
    with AtsClient(server.target, retries=0, timeout=5) as client:
        wait_for(lambda: health(client) == "NOT_SERVING", what="port open, no model")
        assert health(client, "tiny") == "NOT_FOUND"

        # a version that cannot load: FAILED with its reason, still not serving
        broken = tmp_path / "broken"
        shutil.copytree(tiny_model_dir, broken)
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        place(broken, repo / "tiny" / "1")
        wait_for(lambda: versions(client) == [(1, pb.ModelVersionStatus.FAILED)], what="version 1 FAILED")
        assert client.metadata("tiny").versions[0].message
        assert (health(client), health(client, "tiny")) == ("NOT_SERVING", "NOT_SERVING")

        place(tiny_model_dir, repo / "tiny" / "2")
        wait_for(lambda: health(client) == "SERVING", what="SERVING after a good version")
        assert health(client, "tiny") == "SERVING"
        assert health(client, "ats.v1.AttentionSampling") == "SERVING"

        shutil.rmtree(repo / "tiny")
        wait_for(lambda: health(client, "tiny") == "NOT_SERVING", what="model removed")
        assert health(client) == "NOT_SERVING"
        assert versions(client) == []
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert records[0]["message"].startswith("effective configuration")
    assert records[0]["config"]["poll_interval"] == {"value": 0.2, "from": "flag"}
    assert any("failed to load" in r["message"] and r["level"] == "ERROR" for r in records)


def test_new_version_swaps_in_under_load(start_server, make_repository, tiny_model_dir, tmp_path):
    repo = make_repository((1,))
    server = start_server(repo, "--poll-interval", "0.2")
    served: list[int] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def loop() -> None:
        pixels = random_image(96, 96)
        with AtsClient(server.target, retries=0, timeout=30) as client:
            while not stop.is_set():
                try:
                    served.append(client.predict(pixels, n_patches=2).model_version)
                except AtsError as error:
                    failures.append(error)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        wait_for(lambda: len(served) >= 5, what="first predictions")
        place(tiny_model_dir, repo / "tiny" / "2")
        wait_for(lambda: served and served[-1] == 2, what="version 2 served")
        shutil.move(repo / "tiny" / "1", tmp_path / "removed-1")
        with AtsClient(server.target) as client:
            wait_for(
                lambda: versions(client) == [(2, pb.ModelVersionStatus.READY)], what="version 1 unloaded"
            )
        count = len(served)
        wait_for(lambda: len(served) >= count + 5, what="predictions after the swap")
    finally:
        stop.set()
        worker.join(60)
    assert not failures, failures[:3]
    assert served[0] == 1 and set(served[count:]) == {2}
    assert "tiny version 1 unloaded" in server.log()
    samples = scrape(server.metrics_url)
    assert metric(samples, "ats_model_ready", model="tiny", version="2") == 1
    assert not any(n == "ats_model_ready" and ("version", "1") in ls for n, ls in samples)


def test_sigterm_drains_in_flight_requests(start_server, make_repository):
    server = start_server(make_repository(), "--drain-delay", "6", "--grace-period", "30")
    release = threading.Event()
    png = encode_image(random_image(128, 128))
    with (
        grpc.insecure_channel(server.target) as channel,
        AtsClient(server.target, retries=0, timeout=2) as client,
    ):
        call = pb_grpc.AttentionSamplingStub(channel).PredictStream.future(
            held_stream(pb.PredictRequest(n_patches=3), png, release), timeout=60
        )
        wait_for(
            lambda: metric(scrape(server.metrics_url), "ats_requests_in_flight") == 1,
            what="upload in flight",
        )
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: health(client) == "NOT_SERVING", timeout=5, what="NOT_SERVING while draining")
        assert health(client, "tiny") == "NOT_SERVING"
        release.set()
        response = call.result(timeout=60)
    assert response.model_name == "tiny" and len(response.patches) == 3
    assert server.process.wait(60) == 0
    assert "draining" in server.log() and "stopped" in server.log()


def test_capacity_deadline_and_cancellation(start_server, make_repository):
    server = start_server(make_repository(), "--max-uploads", "2", "--queue-timeout", "0.3")
    png = encode_image(random_image(128, 128))
    small = random_image(64, 64)
    header = pb.PredictRequest(n_patches=2)

    def current() -> dict:
        return scrape(server.metrics_url)

    with grpc.insecure_channel(server.target) as channel, AtsClient(server.target, retries=0) as client:
        stub = pb_grpc.AttentionSamplingStub(channel)
        first, second = threading.Event(), threading.Event()
        slow = stub.PredictStream.future(held_stream(header, png, first), timeout=60)
        slower = stub.PredictStream.future(held_stream(header, png, second), timeout=60)
        wait_for(lambda: metric(current(), "ats_uploads_receiving") == 2, what="both uploads receiving")
        # uploads are received before a prediction slot is taken: held ones block no prediction
        assert all(client.predict(small, n_patches=2).label for _ in range(3))
        # but they are bounded in number
        with pytest.raises(grpc.RpcError) as refused:
            stub.PredictStream(iter([pb.PredictStreamRequest(header=header)]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-uploads" in refused.value.details()
        first.set(), second.set()
        assert slow.result(60).label and slower.result(60).label
        assert client.predict(small).label

        decoded = metric(current(), "ats_stage_seconds_count", stage="decode")
        # a deadline passing during the upload stops the request before any stage
        never = threading.Event()
        with pytest.raises(grpc.RpcError) as caught:
            stub.PredictStream(held_stream(header, png, never), timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(
            lambda: (
                metric(current(), "ats_requests_total", rpc="PredictStream", code="DEADLINE_EXCEEDED") == 1
            ),
            timeout=10,
            what="deadline counted",
        )
        # a cancelled call too
        cancelled = stub.PredictStream.future(held_stream(header, png, never), timeout=60)
        wait_for(lambda: metric(current(), "ats_requests_in_flight") == 1, what="upload started")
        cancelled.cancel()
        wait_for(
            lambda: metric(current(), "ats_requests_total", rpc="PredictStream", code="CANCELLED") == 1,
            timeout=10,
            what="cancellation counted",
        )
        never.set()
        samples = current()
        assert metric(samples, "ats_stage_seconds_count", stage="decode") == decoded
        assert metric(samples, "ats_requests_in_flight") == 0
        assert (
            metric(
                samples,
                "grpc_server_handled_total",
                grpc_method="PredictStream",
                grpc_code="DEADLINE_EXCEEDED",
            )
            == 1
        )


def test_health_watch_streams_the_drain(start_server, make_repository):
    """Kubernetes-style watchers see SERVING, then NOT_SERVING when SIGTERM drains."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = start_server(make_repository(), "--drain-delay", "3")
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="tiny"), timeout=60
        )
        seen = [next(watch).status]
        assert seen == [health_pb2.HealthCheckResponse.SERVING]
        server.process.send_signal(signal.SIGTERM)
        seen.append(next(watch).status)
        assert seen[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    assert server.process.wait(60) == 0
