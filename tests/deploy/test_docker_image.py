"""The image's build and start, replayed on this machine without a Docker engine.

The builder and runtime stages are read from the Dockerfile and carried out
under a temporary root: its COPY instructions copy what the build context
would hold (after .dockerignore), its install RUNs run the real install
script into a virtual environment at the stage's path, and the runtime
stage's ENTRYPOINT starts with its ENV until its HEALTHCHECK command passes.
Only what needs a Docker engine or root is left out: the base images'
packages, and the virtual environment sees the system site-packages (so
TensorFlow is not downloaded again) instead of its own.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.deploy.test_docker import (
    INSTALL_SCRIPT,
    ROOT,
    context_files,
    lineage_env,
    lineage_runs,
    parse_dockerfile,
    stage,
)
from tests.support import free_port

# The variant replayed: this machine's TensorFlow is the CPU one.
VARIANT = "cpu"
# Instructions of the builder and runtime stages (and the stages they are
# built FROM) that set up the base system.
SYSTEM_STEPS = ("apt-get ", "python3 -m venv ", "groupadd ")


def replay_copies(name: str, root: pathlib.Path) -> None:
    """Carry out a stage's COPY instructions from the build context into ``root``."""
    workdir = "/"
    for instruction in stage(name).instructions:
        if instruction.keyword == "WORKDIR":
            workdir = instruction.args
        if instruction.keyword != "COPY":
            continue
        sources, dest, flags = instruction.copy()
        if "from" in flags:
            continue  # another stage's files: already in place under the same root
        target = root / pathlib.PurePosixPath(workdir, dest).relative_to("/")
        into_folder = dest.endswith("/") or len(sources) > 1
        for source in sources:
            origin = ROOT / source
            for file in context_files(source):
                if origin.is_dir():
                    out = target / file.relative_to(origin)
                else:
                    out = target / file.name if into_folder else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)


def under(root: pathlib.Path, container_path: str) -> pathlib.Path:
    return root / container_path.lstrip("/")


def stage_env(root: pathlib.Path, name: str) -> dict[str, str]:
    """ENV of the stage (with its parents'), absolute container paths moved under ``root``."""
    return {
        key: str(under(root, value)) if value.startswith("/") else value
        for key, value in lineage_env(name, VARIANT).items()
        if key != "PATH"
    }


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> pathlib.Path:
    """The builder stage carried out: a virtual environment holding the project."""
    assert [s.name for s in parse_dockerfile()][-1] == "runtime"
    root = tmp_path_factory.mktemp("image")
    env = dict(os.environ, **stage_env(root, "builder"))
    venv = pathlib.Path(env["VIRTUAL_ENV"])
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
    )
    env["PATH"] = f"{venv / 'bin'}:{os.environ['PATH']}"
    replay_copies("builder", root)
    workdir = under(root, stage("builder").all("WORKDIR")[-1].args)
    for command in lineage_runs("builder", VARIANT):
        if INSTALL_SCRIPT in command:
            subprocess.run(command, shell=True, cwd=workdir, env=env, check=True)
        else:
            assert command.startswith(SYSTEM_STEPS), f"builder step not replayed: {command}"
    return root


@pytest.mark.slow
def test_builder_installs_the_project_into_the_virtual_environment(image_root):
    venv = under(image_root, lineage_env("builder", VARIANT)["VIRTUAL_ENV"])
    code = (
        "import ats, ats_api, ats_client, model_ops, service, json; "
        "from model_ops.op_library import load_op_library; load_op_library(); "
        "print(json.dumps([m.__file__ for m in (ats, ats_api, ats_client, model_ops, service)]))"
    )
    out = subprocess.run(
        [venv / "bin" / "python", "-c", code], capture_output=True, text=True, cwd=image_root, check=True
    ).stdout
    for module_file in json.loads(out.splitlines()[-1]):
        assert pathlib.Path(module_file).is_relative_to(venv), f"{module_file} is not the installed copy"
    assert sorted((venv / "bin").glob("ats-*")), "console scripts missing"


def _listed_models(env: dict[str, str]) -> set[str]:
    """The model names ``ats-client models`` lists (a model shows once a version is ready)."""
    listing = subprocess.run(
        ["ats-client", "models", "--server", f"localhost:{env['ATS_PORT']}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        line.split(":")[0].removesuffix(" (default)")
        for line in listing.splitlines()
        if line and not line.startswith(" ")
    }


@pytest.mark.slow
def test_runtime_stage_serves_the_shipped_models_and_passes_its_healthcheck(image_root, tmp_path):
    runtime = stage("runtime")
    assert [s for s in lineage_runs("runtime", VARIANT) if not s.startswith(SYSTEM_STEPS)] == []
    replay_copies("runtime", image_root)
    env = dict(os.environ, **stage_env(image_root, "runtime"))
    env["PATH"] = f"{pathlib.Path(env['VIRTUAL_ENV']) / 'bin'}:{os.environ['PATH']}"
    for port in ("ATS_PORT", "ATS_METRICS_PORT", "ATS_HEALTH_PORT"):
        env[port] = str(free_port())
    healthcheck = runtime.healthcheck(env)
    workdir = under(image_root, runtime.all("WORKDIR")[-1].args)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            runtime.all("ENTRYPOINT")[-1].json_args(),
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, f"ats-serve exited:\n{log.read_text(errors='replace')}"
            check = subprocess.run(healthcheck, cwd=workdir, env=env, capture_output=True, text=True)
            if check.returncode == 0:
                break
            assert time.monotonic() < deadline, f"never healthy: {check.stdout}{check.stderr}"
            time.sleep(2)
        # Healthy means some model is ready; the others may still be loading.
        shipped = {p.name for p in (ROOT / "models").iterdir() if p.is_dir()}
        while (served := _listed_models(env)) != shipped:
            assert time.monotonic() < deadline, f"served {served}, shipped {shipped}"
            time.sleep(2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
