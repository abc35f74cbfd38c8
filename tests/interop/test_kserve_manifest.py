"""The KServe InferenceService of docker/k8s/optional/: the server as a v2
custom predictor. Its settings must be ones the server reads, its port and
probes the REST front end's, its memory limit the server's own ceiling."""

from __future__ import annotations

import pathlib

import yaml

from service.config import env_name, load_config, memory_ceiling
from service.server.oip_http import OpenInferenceHttp

K8S = pathlib.Path(__file__).resolve().parents[2] / "docker" / "k8s"
GiB = 1 << 30


def _container() -> dict:
    (service,) = list(yaml.safe_load_all((K8S / "optional" / "kserve-inferenceservice.yaml").read_text()))
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    predictor = service["spec"]["predictor"]
    assert predictor["protocolVersion"] == "v2"
    (container,) = predictor["containers"]
    return container


def test_settings_are_the_servers_and_the_port_is_the_rest_front_end() -> None:
    container = _container()
    env = {e["name"]: e["value"] for e in container["env"]}
    config, _ = load_config([], environ=env)  # refuses a value it cannot read
    assert set(env) <= {env_name(name) for name in config.__dataclass_fields__}
    (port,) = container["ports"]
    assert port == {"name": "http1", "containerPort": config.http_port, "protocol": "TCP"}
    assert config.host == "0.0.0.0"
    # the probes ask routes the REST front end serves, on its port
    routes = {r.resource.canonical for r in _app_routes() if r.resource is not None}
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": config.http_port}
        assert path in routes


def test_memory_limit_holds_the_servers_ceiling() -> None:
    container = _container()
    config, _ = load_config([], environ={e["name"]: e["value"] for e in container["env"]})
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and int(limit[:-2]) * GiB >= memory_ceiling(config)


def test_image_is_the_deployments() -> None:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    images = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert _container()["image"] in images


def _app_routes() -> list:
    """The REST routes, from a front end built without a data plane (routes need none)."""
    front = OpenInferenceHttp(None, None, None, frozenset(), 1 << 20)  # type: ignore[arg-type]
    return list(front.app.router.routes())
