"""The Grafana dashboard: valid PromQL (promtool parses every query), the
panels the deployment issue asks for, and every metric it queries exported by
a real running server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import yaml

from tests.support import REPO_ROOT, Prometheus, scrape

DASHBOARD = REPO_ROOT / "docker" / "grafana" / "dashboards" / "ats-serving.json"
PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
# Grafana variables, replaced by values Prometheus accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*"}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[str]:
    """PromQL of every panel target and of the template variables."""
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
        assert inner, variable["definition"]
        exprs.append(inner.group(1))
    return exprs


def prometheus_ready(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not
    functions, keywords, label names in matchers or grouping lists, or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        if not match.group(2) and match.group(1) not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def queried_metrics() -> set[str]:
    return {name for expr in queries() for name in metric_names(prometheus_ready(expr))}


def test_metric_name_extraction():
    expr = (
        "histogram_quantile(0.99, sum by (le, stage) (rate(ats_stage_seconds_bucket"
        '{model=~"$model", stage!="total"}[5m]))) / ignoring (x) group_left (y) other:metric offset 1m'
    )
    assert metric_names(expr) == {"ats_stage_seconds_bucket", "other:metric"}
    assert metric_names("sum(up) > bool 0 and on (job) max without (a) (m2)") == {"up", "m2"}


def test_promtool_parses_every_query(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is missing: run bash .ci/setup.sh"
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": prometheus_ready(e)}
                    for i, e in enumerate(queries())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_panel_has_a_title_and_queries():
    for panel in dashboard()["panels"]:
        assert panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_panels_tile_the_grid_without_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def _panel_queries(title: str) -> list[str]:
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == title]
    return [re.sub(r"\s+", " ", t["expr"]) for t in panel["targets"]]


def test_traffic_panels():
    (rate,) = _panel_queries("Request rate")
    assert "rate(ats_requests_total" in rate
    errors = _panel_queries("Error rate by status code")
    assert any("sum by (code)" in e and 'code!="OK"' in e for e in errors)
    assert any("sum by (grpc_code)" in e and "grpc_server_handled_total" in e for e in errors)


def test_protocol_panels_compare_the_front_ends():
    (rate,) = _panel_queries("Request rate")
    assert "sum by (model, protocol, rpc)" in rate
    p50, p99 = _panel_queries("Prediction latency per protocol")
    for quantile, expr in (("0.5", p50), ("0.99", p99)):
        assert expr.startswith(f"histogram_quantile({quantile}, sum by (le, protocol) ")
        assert "rate(ats_request_seconds_bucket" in expr
    assert "sum by (protocol, rpc)" in _panel_queries("Predictions per protocol")[0]
    (ratio,) = _panel_queries("Error ratio per protocol")
    assert ratio.count("sum by (protocol)") == 2 and 'code!="OK"' in ratio


def test_latency_percentiles_per_stage_come_from_the_histogram():
    for quantile in (50, 95, 99):
        (expr,) = _panel_queries(f"p{quantile} latency per stage")
        assert re.fullmatch(
            rf"histogram_quantile\({re.escape(str(quantile / 100))}, sum by \(le, stage\) "
            r"\(rate\(ats_stage_seconds_bucket\{[^}]*\}\[\$__rate_interval\]\)\)\)",
            expr,
        ), expr


def test_patches_readiness_and_tile_panels():
    assert "rate(ats_patches_total" in _panel_queries("Patches per second")[0]
    assert "ats_model_ready" in _panel_queries("Model readiness")[0]
    assert "rate(ats_tile_bytes_read_total" in _panel_queries("Bytes read for tile references")[0]


def traffic(server, requests: int = 1) -> None:
    """Successful predictions and one refused request (NOT_FOUND) on a real server."""
    from ats_client import AtsClient, AtsError

    with AtsClient(server.target) as client:
        channels = client.metadata().channels
        rng = np.random.default_rng(0)
        for _ in range(requests):
            client.predict(rng.integers(0, 256, (96, 128, channels), dtype=np.uint8))
        with pytest.raises(AtsError, match="NOT_FOUND"):
            client.predict(np.zeros((96, 128, channels), np.uint8), model="no-such-model")


@pytest.fixture(scope="module")
def served_metrics(ats_server) -> set[str]:
    """Sample names (with _total, _bucket, _sum, _count) a real ats-serve
    exports after a prediction and a refused request."""
    traffic(ats_server)
    return {name for name, _ in scrape(ats_server.metrics_url)}


@pytest.mark.slow
def test_every_queried_metric_is_exported_by_a_running_server(served_metrics):
    missing = queried_metrics() - served_metrics
    assert not missing, f"the dashboard queries metrics the server does not export: {sorted(missing)}"


@pytest.fixture(scope="module")
def prometheus(ats_server, tmp_path_factory) -> Iterator[Prometheus]:
    """Prometheus scraping the shared server with the compose stack's scrape job,
    over plain HTTP: the shared server has no TLS (tests/security/test_metrics_tls.py
    runs the job as it is, over HTTPS)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ats-server"]
    job = {key: value for key, value in job.items() if key not in ("scheme", "tls_config")}
    target = urllib.parse.urlsplit(ats_server.metrics_url).netloc
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), target, job)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_every_panel_shows_data_from_a_scraped_server(ats_server, prometheus):
    """Traffic while Prometheus scrapes, then each query must return series."""
    exprs = {e: prometheus_ready(e) for e in queries()}
    empty = set(exprs)
    deadline = time.monotonic() + 60
    while empty and time.monotonic() < deadline:
        traffic(ats_server, requests=2)
        empty = {e for e in empty if not prometheus.query(exprs[e])}
    assert not empty, f"dashboard queries without data: {sorted(empty)}"
