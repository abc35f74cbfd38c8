"""What users install: the three distributions built into wheels as pip builds
them, installed into fresh virtual environments and run from outside the
checkout, so nothing is imported from the repository by accident.

- attention-sampling (the repository root): model_ops with the compiled op, ats.
- attention-sampling-client (clients/): ats_client and the generated ats_api
  stubs; installed by pip from PyPI into a venv without TensorFlow and
  without a compiler, then talks to a real server.
- attention-sampling-serving (service/): the server.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tomllib
from PIL import Image

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
# role -> (project folder, distribution name)
PROJECTS = {
    "library": (".", "attention-sampling"),
    "client": ("clients", "attention-sampling-client"),
    "server": ("service", "attention-sampling-serving"),
}
CLIENT_DEPENDENCIES = {"grpcio", "grpcio-health-checking", "grpcio-status", "protobuf", "numpy", "pillow"}


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """Run, failing with the command's output; the environment never points
    Python at the checkout."""
    env = {k: v for k, v in kwargs.pop("env", os.environ).items() if k != "PYTHONPATH"}
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kwargs)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def pyproject(role: str) -> dict:
    return tomllib.loads((REPO / PROJECTS[role][0] / "pyproject.toml").read_text())


def wheel_names(wheel: pathlib.Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def wheel_metadata(wheel: pathlib.Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def requirement_names(metadata: email.message.Message) -> set[str]:
    names = set()
    for requirement in metadata.get_all("Requires-Dist") or []:
        name = requirement.split(";")[0].strip()
        for stop in "<>=!~[ (":
            name = name.split(stop)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def site_file(venv: pathlib.Path, code: str, cwd: pathlib.Path) -> list[str]:
    """The JSON list ``code`` prints last, run by the venv's Python in ``cwd``."""
    out = run([venv / "bin" / "python", "-c", code], cwd=cwd).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The three wheels, built in place without isolation as docker/install.sh
    builds them. setuptools' build folders go to the temporary directory
    (DIST_EXTRA_CONFIG): a stale build/lib in the checkout would otherwise
    carry removed modules into a wheel."""
    out = tmp_path_factory.mktemp("wheels")
    built = {}
    for role, (folder, _) in PROJECTS.items():
        config = out / f"{role}.cfg"
        config.write_text(f"[build]\nbuild_base = {out / 'build' / role}\n")
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        run(
            [*pip_wheel, "-w", out / role, REPO / folder],
            env={**os.environ, "DIST_EXTRA_CONFIG": str(config)},
            cwd=out,
        )
        (built[role],) = (out / role).glob("*.whl")
    return built


def test_the_three_share_one_version_and_the_server_pins_it():
    versions = {role: pyproject(role)["project"].get("version") for role in PROJECTS}
    assert len(set(versions.values())) == 1, versions
    version = versions["library"]
    pins = pyproject("server")["project"]["dependencies"]
    assert f"attention-sampling=={version}" in pins
    assert f"attention-sampling-client=={version}" in pins


def test_server_package_list_covers_every_subpackage():
    """service/ is the package `service` (package-dir "."), so its subpackages
    are listed by hand: the list must name every folder holding an __init__.py."""
    root = REPO / "service"

    def packages(folder: pathlib.Path, name: str) -> list[str]:
        found = [name]
        for child in sorted(folder.iterdir()):
            if child.is_dir() and (child / "__init__.py").is_file():
                found += packages(child, f"{name}.{child.name}")
        return found

    config = pyproject("server")["tool"]["setuptools"]
    assert config["package-dir"] == {"service": "."}
    assert sorted(config["packages"]) == sorted(packages(root, "service"))


def test_library_wheel_holds_model_ops_the_op_and_ats(wheels):
    wheel = wheels["library"]
    names = wheel_names(wheel)
    assert {
        "model_ops/__init__.py",
        "model_ops/training/__init__.py",
        "model_ops/training/cli.py",
        "model_ops/datasets/__init__.py",
        "model_ops/_patch_ops.so",
        "model_ops/_build_info.json",
        "model_ops/cc/VERSION",
        "ats/core.py",
    } <= names
    assert not [n for n in names if n.split("/")[0] in {"service", "ats_client", "ats_api"}]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not wheel.name.endswith("-any.whl"), "a wheel holding a compiled library is platform-specific"
    metadata = wheel_metadata(wheel)
    assert "tensorflow==2.21.*" in metadata.get_all("Requires-Dist")
    assert not requirement_names(metadata) & {"grpcio", "grpcio-tools", "prometheus-client"}


def test_client_wheel_holds_the_stubs_and_no_tensorflow(wheels):
    wheel = wheels["client"]
    names = wheel_names(wheel)
    assert {
        "ats_api/__init__.py",
        "ats_api/v1/__init__.py",
        "ats_api/v1/attention_sampling_pb2.py",
        "ats_api/v1/attention_sampling_pb2_grpc.py",
        "ats_client/cli.py",
    } <= names
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "ats_api",
        "ats_client",
    }
    assert wheel.name.endswith("-py3-none-any.whl")
    metadata = wheel_metadata(wheel)
    assert requirement_names(metadata) == CLIENT_DEPENDENCIES
    # the stubs refuse a grpcio older than the grpcio-tools that generated them
    tools = importlib.metadata.version("grpcio-tools")
    assert f"grpcio>={tools}" in metadata.get_all("Requires-Dist")


def test_server_wheel_holds_the_service_package(wheels):
    wheel = wheels["server"]
    names = wheel_names(wheel)
    assert {"service/__init__.py", "service/config.py", "service/server/main.py"} <= names
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"service"}
    assert not [n for n in names if n.endswith((".md", ".toml"))]
    needs = requirement_names(wheel_metadata(wheel))
    assert {"attention-sampling", "attention-sampling-client", "tifffile", "openslide-python"} <= needs


@pytest.fixture(scope="module")
def server_venv(wheels, tmp_path_factory) -> pathlib.Path:
    """A venv seeing the system's TensorFlow, holding the three wheels."""
    venv = tmp_path_factory.mktemp("server-venv") / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    # --ignore-installed: the checkout's editable installs are visible through
    # the system site-packages under the same names and version.
    run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            *wheels.values(),
        ]
    )
    return venv


@pytest.mark.parametrize("script", ["ats-serve", "ats-train", "ats-eval", "ats-client"])
def test_installed_console_scripts_run(server_venv, script, tmp_path):
    out = run([server_venv / "bin" / script, "--help"], cwd=tmp_path).stdout
    assert out.startswith(f"usage: {script}")


def test_server_venv_imports_the_installed_copies_and_loads_the_op(server_venv, tmp_path):
    code = (
        "import json, ats, ats_api, ats_client, model_ops, service\n"
        "from model_ops import load_op_library\n"
        "assert hasattr(load_op_library(), 'ats_extract_patches')\n"
        "print(json.dumps([m.__file__ for m in (ats, ats_api, ats_client, model_ops, service)]))\n"
    )
    for module_file in site_file(server_venv, code, tmp_path):
        assert pathlib.Path(module_file).is_relative_to(server_venv), (
            f"{module_file} is not the installed copy"
        )


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> pathlib.Path:
    """A fresh venv (no system site-packages) where pip installs clients/ as a
    user would: build isolation, dependencies from the index, and no compiler."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    run([sys.executable, "-m", "venv", venv])
    run(
        [venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", REPO / "clients"],
        env={**os.environ, "CC": "/bin/false", "CXX": "/bin/false"},
        cwd=venv.parent,
    )
    return venv


def test_client_installs_without_tensorflow(client_venv, tmp_path):
    python = client_venv / "bin" / "python"
    assert run([client_venv / "bin" / "ats-client", "--help"], cwd=tmp_path).stdout.startswith(
        "usage: ats-client"
    )
    missing = subprocess.run(
        [python, "-c", "import tensorflow"], capture_output=True, text=True, cwd=tmp_path
    )
    assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr
    code = (
        "import json, ats_client, ats_api.v1.attention_sampling_pb2_grpc\n"
        "import ats_api.v1.attention_sampling_pb2 as pb\n"
        "print(json.dumps([ats_client.__file__, pb.__file__]))\n"
    )
    for module_file in site_file(client_venv, code, tmp_path):
        assert pathlib.Path(module_file).is_relative_to(client_venv)
    listed = run([python, "-m", "pip", "list", "--format=json"], cwd=tmp_path).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "attention-sampling-client" in installed
    assert not installed & {"tensorflow", "tensorflow-cpu", "keras", "attention-sampling"}


def test_client_venv_talks_to_a_real_server(client_venv, ats_server, tmp_path):
    client = client_venv / "bin" / "ats-client"
    health = run([client, "health", "--server", ats_server.target], cwd=tmp_path).stdout
    assert "SERVING" in health
    image = tmp_path / "image.png"
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[30:60, 80:110] = 255
    Image.fromarray(pixels).save(image)
    done = run(
        [
            client,
            "predict",
            image,
            "--json",
            "--seed",
            "1",
            "--n-patches",
            "2",
            "--server",
            ats_server.target,
        ],
        cwd=tmp_path,
    )
    response = json.loads(done.stdout)
    assert response["model_name"] == "tiny" and len(response["patches"]) == 2
