"""A real Prometheus (Debian package, started here on loopback) scrapes a real
server; its HTTP API must report exactly the requests this test made."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

from ats_client import AtsClient, AtsError
from tests.support import REPO_ROOT, Prometheus, random_image, wait_for

pytestmark = pytest.mark.slow
SETUP = REPO_ROOT / "tests" / "setup_prometheus.sh"


@pytest.fixture()
def prometheus_for(tmp_path) -> Iterator:
    """Factory: a Prometheus scraping the given server's metrics port."""
    if shutil.which("prometheus") is None:
        subprocess.run(["bash", str(SETUP)], check=True)
    started: list[Prometheus] = []

    def start(server) -> Prometheus:
        instance = Prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}")
        started.append(instance)
        instance.wait_ready()
        return instance

    yield start
    for instance in started:
        instance.stop()


def test_prometheus_sees_the_requests_made(start_server, make_repository, prometheus_for):
    server = start_server(make_repository())
    prometheus = prometheus_for(server)
    sizes = [(64, 64), (120, 96), (200, 200), (256, 320)]
    totals, megapixels, patches = [], 0.0, 0
    with AtsClient(server.target, retries=0) as client:
        for i, (height, width) in enumerate(sizes):
            response = client.predict(random_image(height, width, seed=i), n_patches=i + 1)
            totals.append(next(t.seconds for t in response.timings if t.stage == "total"))
            megapixels += height * width / 1e6
            patches += len(response.patches)
        for call in (
            lambda: client.predict(random_image(64, 64), model="nope"),
            lambda: client.predict(random_image(64, 64), n_patches=1000),
        ):
            with pytest.raises(AtsError):
                call()

    wait_for(
        lambda: prometheus.value('sum(ats_requests_total{rpc="Predict"})') == 6,
        timeout=60,
        what="Prometheus scraping the six requests",
    )

    assert prometheus.value('up{job="ats"}') == 1
    assert prometheus.value('ats_requests_total{rpc="Predict",code="OK",model="tiny",version="1"}') == 4
    # an unknown name is client text: it counts under model "", never as a series of its own
    assert prometheus.value('ats_requests_total{rpc="Predict",code="NOT_FOUND",model=""}') == 1
    assert prometheus.value('count(ats_requests_total{model="nope"})') is None
    assert prometheus.value('ats_requests_total{rpc="Predict",code="INVALID_ARGUMENT",model="tiny"}') == 1
    assert prometheus.value('grpc_server_started_total{grpc_method="Predict"}') == 6
    assert prometheus.value('grpc_server_handled_total{grpc_method="Predict",grpc_code="OK"}') == 4
    assert prometheus.value('grpc_server_handled_total{grpc_method="Predict",grpc_code="NOT_FOUND"}') == 1
    assert prometheus.value('grpc_server_handling_seconds_count{grpc_method="Predict"}') == 6

    # the latency histogram holds exactly the totals the responses reported
    assert prometheus.value('ats_stage_seconds_count{stage="total"}') == 4
    assert prometheus.value('ats_stage_seconds_sum{stage="total"}') == pytest.approx(sum(totals), rel=1e-9)
    buckets = prometheus.query('ats_stage_seconds_bucket{stage="total"}')
    assert len(buckets) == 15  # 14 bounds and +Inf
    for labels, count in buckets.items():
        bound = float(dict(labels)["le"])
        assert count == sum(t <= bound for t in totals), (bound, count, totals)
    for stage in ("decode", "lowres", "attention", "sampling", "extract", "features", "aggregate", "head"):
        assert prometheus.value(f'ats_stage_seconds_count{{stage="{stage}"}}') == 4
    median = prometheus.value(
        'histogram_quantile(0.5, sum by (le) (ats_stage_seconds_bucket{stage="total"}))'
    )
    assert median is not None and 0 < median <= max(totals) * 2.5

    assert prometheus.value('ats_patches_total{model="tiny"}') == patches == 1 + 2 + 3 + 4
    assert prometheus.value('ats_patches_per_request_count{model="tiny"}') == 4
    assert prometheus.value('ats_image_megapixels_sum{model="tiny"}') == pytest.approx(megapixels, rel=1e-9)
    assert prometheus.value('ats_model_ready{model="tiny",version="1"}') == 1
    assert prometheus.value('ats_model_load_seconds{model="tiny",version="1"}') > 0
    assert prometheus.value("ats_requests_in_flight") == 0
    assert prometheus.value("ats_tile_bytes_read_total") == 0  # registered from the start
    assert np.isfinite(prometheus.value('grpc_server_handling_seconds_sum{grpc_method="Predict"}'))
