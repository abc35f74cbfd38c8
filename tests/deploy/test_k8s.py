"""The Kubernetes manifests: valid against the Kubernetes API schema (strict,
so a misspelt field fails), and consistent with each other, with the image
and with the server's configuration."""

from __future__ import annotations

import dataclasses
import pathlib
import stat

import kubernetes_validate
import pytest
import yaml

from service.config import AuthGroup, Config, env_name, load_config, memory_ceiling
from service.server.files import exposure
from tests.deploy.test_docker import stage
from tests.security.support import dev_certs
from tests.support import REPO_ROOT

K8S = REPO_ROOT / "docker" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # oldest release still supported upstream when written


def documents(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomized() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in documents(K8S / name)]


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in kustomized() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container() -> dict:
    (server,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return server


def container_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container()["env"]}


def setting(name: str):
    """The server's effective value of a setting in the pod: env or default."""
    field = next(f for f in dataclasses.fields(Config) if f.name == name)
    return type(field.default)(container_env().get(env_name(name), field.default))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_manifest_file_is_in_the_kustomization():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("document", kustomized(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_probes_are_grpc_health_checks_on_the_health_port():
    """The kubelet's gRPC probe speaks no TLS: it asks the plaintext health-only port."""
    probes = {kind: container()[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for kind, probe in probes.items():
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, kind
        assert probe["grpc"]["port"] == setting("health_port") == 8503, kind
        assert probe["grpc"].get("service", "") == "", f"{kind}: the overall entry follows readiness"
    assert setting("tls_cert"), "the gRPC port speaks TLS, which the probes could not"
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model loading needs time"


def test_container_ports_are_the_server_ports():
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {
        "grpc": setting("port"),
        "http": setting("http_port"),
        "metrics": setting("metrics_port"),
        "health": setting("health_port"),
    }
    assert container_env()["ATS_HTTP_PORT"] == "8501"
    assert set(ports.values()) == {int(p) for i in stage("runtime").all("EXPOSE") for p in i.args.split()}


def test_the_pod_starts_without_insecure_warnings():
    """With the image's settings under the pod's: gRPC, the HTTP/REST port and
    metrics all behind TLS (and tokens or client certificates)."""
    from service.server.app import exposure_warnings

    config = config_from({**stage("runtime").env(), **container_env()})
    assert config.host == "0.0.0.0" and config.http_port == 8501
    assert exposure_warnings(config) == []


def test_container_env_names_real_settings():
    known = {env_name(f.name) for f in dataclasses.fields(Config)}
    assert set(container_env()) <= known
    repository = container_env().get("ATS_MODEL_REPOSITORY")
    assert repository == stage("runtime").env()["ATS_MODEL_REPOSITORY"], "the image's shipped models"


def test_image_user_and_security_context_agree():
    pod = one("Deployment")["spec"]["template"]["spec"]
    uid, _, gid = stage("runtime").all("USER")[-1].args.partition(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid or uid)
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in {m["mountPath"] for m in container()["volumeMounts"]}, "TensorFlow needs a writable /tmp"


def test_resources_have_requests_and_limits():
    resources = container()["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"], key


def config_from(env: dict[str, str]) -> Config:
    config, _ = load_config([], environ=env)
    return config


def test_memory_limit_is_the_documented_formula_of_the_pod_settings():
    """At least the server's memory ceiling, at most 1 GiB above it."""
    limit = parse_quantity(container()["resources"]["limits"]["memory"])
    ceiling = memory_ceiling(config_from(container_env()))
    assert ceiling <= limit <= ceiling + (1 << 30), (ceiling, limit)


def test_compose_memory_limit_is_the_same_formula():
    server = yaml.safe_load((K8S.parent / "compose.yaml").read_text())["services"]["server"]
    limit = parse_quantity(server["mem_limit"].upper().replace("G", "Gi"))
    ceiling = memory_ceiling(config_from({k: str(v) for k, v in server["environment"].items()}))
    assert ceiling <= limit <= ceiling + (1 << 30), (ceiling, limit)


def parse_quantity(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def test_termination_grace_covers_the_drain():
    grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > setting("drain_delay") + setting("grace_period")


def test_deployment_selector_matches_its_pods():
    deployment = one("Deployment")
    assert selects(
        deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )


def test_services_select_the_pods_and_target_named_container_ports():
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    port_numbers = {p["name"]: p["containerPort"] for p in container()["ports"]}
    services = [d for d in kustomized() if d["kind"] == "Service"]
    for service in services:
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_numbers, port
            assert port["port"] == port_numbers[port["targetPort"]], port
    main = one("Service", "ats-server")
    assert {p["name"] for p in main["spec"]["ports"]} == {"grpc", "http", "metrics"}, (
        "health stays in the pod"
    )
    (http,) = [p for p in main["spec"]["ports"] if p["name"] == "http"]
    assert http["appProtocol"] == "https", "the HTTP/REST port speaks the gRPC port's TLS"


def test_headless_service_publishes_only_ready_pods_for_client_side_balancing():
    headless = one("Service", "ats-server-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert not headless.get("publishNotReadyAddresses", False)
    assert [p["targetPort"] for p in headless["ports"]] == ["grpc"]
    note = (K8S / "service.yaml").read_text()
    assert "round_robin" in note and "dns:///ats-server-headless" in note


def test_secrets_reach_the_server_as_files_only_it_reads():
    """TLS files and tokens from Secret volumes updated in place (no subPath),
    root-owned and shared with the pod's fsGroup only: what the server's key
    rule accepts (service.server.files.exposure)."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config = config_from(container_env())
    assert config.restricted_groups() == {AuthGroup.INFERENCE, AuthGroup.METADATA}
    assert config.metrics_tls_client_ca, "metrics over HTTPS for scrapers with a certificate"
    files = {
        config.tls_cert: ("ats-server-tls", "tls.crt"),
        config.tls_key: ("ats-server-tls", "tls.key"),
        config.metrics_tls_cert: ("ats-server-tls", "tls.crt"),
        config.metrics_tls_key: ("ats-server-tls", "tls.key"),
        config.metrics_tls_client_ca: ("ats-server-tls", "ca.crt"),
        config.auth_tokens_file: ("ats-server-tokens", "tokens"),
    }
    for path, (secret, key) in files.items():
        folder, _, name = path.rpartition("/")
        mount = mounts[folder]
        assert mount["readOnly"] and "subPath" not in mount, path
        volume = volumes[mount["name"]]["secret"]
        assert (volume["secretName"], name) == (secret, key), path
        assert exposure(stat.S_IFREG | volume["defaultMode"], 0, pod["securityContext"]["runAsUser"]) is None
        assert volume["defaultMode"] & stat.S_IRGRP, "the server reads it through its fsGroup"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    readme = (K8S.parent / "README.md").read_text()
    assert all(
        f"kubectl create secret generic {name}" in readme for name in ("ats-server-tls", "ats-server-tokens")
    )


def test_prometheus_annotations_point_at_the_metrics_port():
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/scheme"] == "https"
    assert int(annotations["prometheus.io/port"]) == setting("metrics_port")
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_monitor_scrapes_the_metrics_port_of_the_service():
    (monitor,) = documents(K8S / "optional" / "servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    service = one("Service", "ats-server")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "https"
    tls = endpoint["tlsConfig"]
    assert tls["serverName"] in dev_certs.SERVER_NAMES, "a name the server certificate holds"
    assert {tls["cert"]["secret"]["key"], tls["keySecret"]["key"], tls["ca"]["secret"]["key"]} == {
        "tls.crt",
        "tls.key",
        "ca.crt",
    }


def test_autoscaler_targets_the_deployment():
    hpa = one("HorizontalPodAutoscaler")["spec"]
    deployment = one("Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"], "CPU utilisation needs CPU requests"


def test_disruption_budget_selects_the_pods():
    pdb = one("PodDisruptionBudget")["spec"]
    assert selects(
        pdb["selector"]["matchLabels"], one("Deployment")["spec"]["template"]["metadata"]["labels"]
    )
    assert pdb["minAvailable"] < one("HorizontalPodAutoscaler")["spec"]["minReplicas"]


def test_deployed_image_tags_are_the_released_version():
    """The image named by compose and Kubernetes is the version the packages carry."""
    import re

    pyproject = (REPO_ROOT / "service" / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)[1]
    for path in ("docker/k8s/deployment.yaml", "docker/compose.yaml"):
        tags = re.findall(r"attention-sampling-serving:([\w.-]+)", (REPO_ROOT / path).read_text())
        assert tags and set(tags) == {version}, (path, tags, version)
