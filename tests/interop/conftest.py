"""A virtual environment holding the stock tritonclient from PyPI and nothing
of this project (no TensorFlow either): clients nobody here wrote."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

CALLS = pathlib.Path(__file__).resolve().parent / "tritonclient_calls.py"


def _run(cmd: list[str | pathlib.Path], cwd: pathlib.Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


class TritonVenv:
    """Runs scenarios of tritonclient_calls.py with the venv's Python, from outside the checkout."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"

    def call(self, scenario: str, *args: object) -> dict:
        out = _run([self.python, CALLS, scenario, *map(str, args)], cwd=self.root.parent)
        return json.loads(out.strip().splitlines()[-1])

    def installed(self) -> set[str]:
        listed = _run([self.python, "-m", "pip", "list", "--format=json"], cwd=self.root.parent)
        return {p["name"].lower() for p in json.loads(listed)}


@pytest.fixture(scope="session")
def triton_venv(tmp_path_factory: pytest.TempPathFactory) -> TritonVenv:
    """``tritonclient[grpc,http]`` installed by pip from the index into a fresh venv
    (pip's own download cache makes reruns cheap)."""
    root = tmp_path_factory.mktemp("tritonclient") / "venv"
    _run([sys.executable, "-m", "venv", root], cwd=root.parent)
    _run(
        [
            root / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "tritonclient[grpc,http]",
        ],
        cwd=root.parent,
    )
    return TritonVenv(root)
