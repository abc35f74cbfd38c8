"""The compose stack: promtool accepts the Prometheus configuration, and the
server, Prometheus and Grafana find each other (service names, ports, mounted
files, datasource uid) as they are wired in compose.yaml."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import stat
import subprocess
import urllib.parse

import yaml

from service.config import AuthGroup, Config, env_name, load_config
from service.server.app import exposure_warnings
from service.server.files import exposure
from tests.deploy.test_docker import ROOT, root_image, stage
from tests.security.support import Pki, compose_scrape_job, dev_certs

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
        if source.startswith((".", "/")):
            result[target] = (DOCKER / source).resolve()
    return result


def volumes(name: str) -> dict[str, str]:
    """Container path -> 'volume[:ro]' of each named volume a compose service mounts."""
    result = {}
    for volume in service(name).get("volumes", []):
        source, target, *options = volume.split(":")
        if not source.startswith((".", "/")):
            result[target] = ":".join([source, *options])
    return result


def published_ports(name: str) -> dict[int, int]:
    return {int(c): int(h) for h, c in (p.split(":") for p in service(name)["ports"])}


def installed_secrets() -> dict[str, tuple[str, int, int, str]]:
    """What the service "secrets" installs: container path -> (source file
    name, mode, owner uid, group gid) (owner and group 0: root's)."""
    installed = {}
    for command in service("secrets")["command"][0].split(";"):
        words = command.split()
        if not words or words[0] != "install" or "-d" in words:
            continue
        options = dict(zip(words[1:-1:2], words[2:-1:2], strict=False))
        sources = [w for w in words[1:-1] if w.startswith("/in/")]
        for source in sources:
            name = source.removeprefix("/in/")
            installed[words[-1] + name] = (
                name,
                int(options["-m"], 8),
                int(options.get("-o", 0)),
                int(options.get("-g", 0)),
            )
    return installed


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
    assert set(compose()["services"]) == {"secrets", "server", "prometheus", "grafana"}


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
    health = int(stage("runtime").env()["ATS_HEALTH_PORT"])
    assert set(published_ports("server")) == exposed - {health}, "the health port stays in the container"


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
    assert job["scheme"] == "https"
    assert targets[0].split(":")[0] in dev_certs.SERVER_NAMES, "the server certificate names the target"


SECRETS = "/run/ats-secrets"
# prom/prometheus runs as nobody.
PROMETHEUS_UID = 65534


def server_config() -> Config:
    environment = {k: str(v) for k, v in service("server")["environment"].items()}
    config, _ = load_config([], environ=environment)
    return config


def test_the_stack_runs_with_tls_tokens_and_https_metrics():
    config = server_config()
    assert config.tls_cert and config.auth_tokens_file and config.metrics_tls_client_ca
    assert config.restricted_groups() == {AuthGroup.INFERENCE, AuthGroup.METADATA}
    assert config.health_port == 0 and int(stage("runtime").env()["ATS_HEALTH_PORT"]) > 0, (
        "the image's health port answers its HEALTHCHECK"
    )


def test_the_stack_starts_without_insecure_warnings():
    """In the container (the image binds every interface): gRPC, the HTTP/REST
    port (on, with the gRPC port's TLS and tokens) and metrics all covered."""
    environment = {
        **stage("runtime").env(),
        **{k: str(v) for k, v in service("server")["environment"].items()},
    }
    config, _ = load_config([], environ=environment)
    assert config.host == "0.0.0.0" and config.http_port == 8501
    assert exposure_warnings(config) == []
    assert exposure_warnings(dataclasses.replace(config, tls_cert="", tls_key=""))[1].startswith(
        "HTTP/REST (Open Inference Protocol) listens on 0.0.0.0:8501 without TLS"
    )


def test_secrets_are_installed_for_the_user_that_reads_each(tmp_path):
    """Every file the server and Prometheus read is copied by the service
    "secrets" from docker/secrets/ (as make-dev-certs.py names them) into the
    shared volume, keys private to their reader."""
    installed = installed_secrets()
    made = {p.name for p in Pki.make(tmp_path / "pki").folder.iterdir()}
    assert {name for name, *_ in installed.values()} <= made
    assert mounts("secrets")["/in"] == DOCKER / "secrets"
    assert volumes("secrets") == {SECRETS: "ats-secrets"}
    assert volumes("server") == volumes("prometheus") == {SECRETS: "ats-secrets:ro"}
    assert "ats-secrets" in compose()["volumes"]
    assert service("server")["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    assert service("secrets")["image"] == root_image("runtime", "cpu"), "no image beyond the build's"

    uid = int(stage("runtime").all("USER")[-1].args.split(":")[0])
    config = server_config()
    for path, is_key in (
        (config.tls_cert, False),
        (config.tls_key, True),
        (config.auth_tokens_file, False),
        (config.metrics_tls_cert, False),
        (config.metrics_tls_key, True),
        (config.metrics_tls_client_ca, False),
    ):
        name, mode, owner, _ = installed[path]
        assert name.endswith("-key.pem") == is_key, path
        assert (mode & stat.S_IRUSR and owner == uid) or mode & stat.S_IROTH, f"{path} unreadable"
        if is_key:
            assert exposure(stat.S_IFREG | mode, owner, uid) is None, path
    prometheus_files = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]["tls_config"]
    for key in ("ca_file", "cert_file", "key_file"):
        _, mode, owner, _ = installed[prometheus_files[key]]
        assert (mode == 0o400 and owner == PROMETHEUS_UID) if key == "key_file" else mode == 0o444, key


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
