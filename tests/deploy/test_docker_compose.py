"""The compose stack: promtool accepts the Prometheus configuration, and the
server, Prometheus and Grafana find each other (service names, ports, mounted
files, datasource uid) as they are wired in compose.yaml."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import urllib.parse

import yaml

from service.config import Config, env_name
from tests.deploy.test_docker import ROOT, stage
from tests.security.support import Pki, compose_scrape_job

DOCKER = ROOT / "docker"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


def mounts(name: str) -> dict[str, pathlib.Path]:
    """Container path -> host path of each bind mount of a compose service."""
    result = {}
    for volume in service(name).get("volumes", []):
        source, target = volume.split(":")[:2]
        result[target] = (DOCKER / source).resolve()
    return result


def published_ports(name: str) -> dict[int, int]:
    return {int(c): int(h) for h, c in (p.split(":") for p in service(name)["ports"])}


def grafana_file(container_path: str) -> pathlib.Path:
    """Host file behind a path inside the Grafana container."""
    for target, source in mounts("grafana").items():
        if container_path.startswith(target + "/"):
            return source / container_path[len(target) + 1 :]
    raise AssertionError(f"{container_path} is not mounted into Grafana")


def provisioned(kind: str) -> list[dict]:
    folder = grafana_file(f"/etc/grafana/provisioning/{kind}")
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]


def test_stack_has_server_prometheus_and_grafana():
    assert set(compose()["services"]) == {"server", "prometheus", "grafana"}


def promtool_check(config: pathlib.Path, *flags: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is missing: run bash .ci/setup.sh"
    result = subprocess.run(
        [promtool, "check", "config", *flags, str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_config(tmp_path):
    """As committed (its certificate files exist in the stack only), then in
    full with the files the development-CA script makes."""
    promtool_check(PROMETHEUS_CONFIG, "--syntax-only")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["scrape_configs"] = [
        compose_scrape_job(Pki.make(tmp_path / "pki")) if job["job_name"] == "ats-server" else job
        for job in config["scrape_configs"]
    ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    promtool_check(tmp_path / "prometheus.yml")


def test_server_is_built_from_the_dockerfile_and_publishes_its_ports():
    server = service("server")
    assert (DOCKER / server["build"]["context"]).resolve() == ROOT
    assert (ROOT / server["build"]["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert server["build"]["args"]["VARIANT"] in {"cpu", "gpu"}
    exposed = {int(p) for i in stage("runtime").all("EXPOSE") for p in i.args.split()}
    assert set(published_ports("server")) == exposed


def test_server_settings_are_real_and_stop_waits_for_the_drain():
    environment = service("server").get("environment", {})
    assert set(environment) <= {env_name(f.name) for f in dataclasses.fields(Config)}
    grace = int(service("server")["stop_grace_period"].removesuffix("s"))
    assert grace > Config.drain_delay + Config.grace_period


def test_image_name_is_the_one_kubernetes_deploys():
    deployment = yaml.safe_load((DOCKER / "k8s" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service("server")["image"] == container["image"]


def test_prometheus_scrapes_the_server_metrics_port():
    assert mounts("prometheus")["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    assert "--config.file=/etc/prometheus/prometheus.yml" in service("prometheus")["command"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ats-server"]
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"server:{Config.metrics_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_datasource_is_the_compose_prometheus():
    (datasources,) = provisioned("datasources")
    (source,) = datasources["datasources"]
    url = urllib.parse.urlsplit(source["url"])
    assert source["type"] == "prometheus"
    assert url.hostname == "prometheus" and url.port in published_ports("prometheus")


def test_grafana_loads_the_dashboard_from_its_mount():
    (providers,) = provisioned("dashboards")
    (provider,) = providers["providers"]
    folder = grafana_file(provider["options"]["path"] + "/")
    dashboards = sorted(folder.glob("*.json"))
    assert [p.name for p in dashboards] == ["ats-serving.json"]
    home = service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert grafana_file(home) == dashboards[0]


def test_dashboard_queries_the_provisioned_datasource():
    (datasources,) = provisioned("datasources")
    uid = datasources["datasources"][0]["uid"]
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "ats-serving.json").read_text())
    used = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    used |= {v["datasource"]["uid"] for v in dashboard["templating"]["list"]}
    assert used == {uid}
