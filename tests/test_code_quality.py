"""Lint, format and types are part of the test run, so CI enforces them with
the README's one test command (configuration in pyproject.toml)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("command", [("check", "."), ("format", "--check", ".")], ids=["lint", "format"])
def test_ruff(command):
    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency (pip install -e '.[test]')"
    done = _run(ruff, *command)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_mypy_on_the_server_and_the_client():
    done = _run(sys.executable, "-m", "mypy", "service", "clients/ats_client")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
