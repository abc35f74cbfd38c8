"""Building the op library: one clear error without a compiler, the CUDA
compiler rule (auto takes only CUDA 12), and a real CUDA build with the local
nvcc that links cudart statically and still runs on a CPU-only TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.support import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "model_ops" / "cc" / "build.py"


def load_build_module():
    """Import build.py by path, as setup.py does."""
    spec = importlib.util.spec_from_file_location("ats_op_build", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_nvcc(directory: pathlib.Path, release: str) -> pathlib.Path:
    """An executable that answers `--version` like an nvcc of `release`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nvcc"
    path.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    path.chmod(0o755)
    return path


def test_missing_compiler_gives_one_clear_error(monkeypatch, tmp_path):
    build = load_build_module()
    monkeypatch.setenv("CXX", "ats-no-such-compiler")
    with pytest.raises(
        build.BuildError,
        match=r"no C\+\+ compiler 'ats-no-such-compiler' "
        r"found.*apt-get install g\+\+",
    ):
        build.build_op_library(output_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_build_script_reports_a_missing_compiler_without_traceback():
    proc = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "CXX": "ats-no-such-compiler"},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no C++ compiler")
    assert "Traceback" not in proc.stderr


def test_auto_takes_only_a_cuda_12_nvcc(monkeypatch, tmp_path):
    build = load_build_module()
    nvcc13 = fake_nvcc(tmp_path / "cuda13", "13.0")
    nvcc12 = fake_nvcc(tmp_path / "cuda12", "12.5")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("ATS_NVCC", str(nvcc13))
    monkeypatch.setenv("PATH", str(tmp_path / "cuda13"))
    assert build._select_nvcc("auto") is None
    assert build._select_nvcc("1") == (str(nvcc13), "13.0")
    assert build._select_nvcc("0") is None
    monkeypatch.setenv("PATH", str(tmp_path / "cuda12"))
    assert build._select_nvcc("auto") == (str(nvcc12), "12.5")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.delenv("ATS_NVCC")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (tmp_path / "bin").symlink_to(tmp_path / "cuda12")
    assert build._select_nvcc("auto") == (str(tmp_path / "bin" / "nvcc"), "12.5")


def test_forced_cuda_without_nvcc_and_bad_mode_fail_clearly(monkeypatch, tmp_path):
    build = load_build_module()
    for var in ("ATS_NVCC", "CUDA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(build.BuildError, match="ATS_BUILD_CUDA=1 but no nvcc found"):
        build._select_nvcc("1")
    with pytest.raises(build.BuildError, match="ATS_BUILD_CUDA must be 0, 1 or unset"):
        build._select_nvcc("yes")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_cuda_build_links_cudart_statically_and_runs_on_cpu(tmp_path):
    build = load_build_module()
    info = build.build_op_library(output_dir=tmp_path, cuda="1", verbose=False)
    library = tmp_path / build.LIBRARY_NAME
    assert info["cuda"] and info["cuda_archs"]
    assert json.loads((tmp_path / build.BUILD_INFO_NAME).read_text()) == info
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    assert " cuda" not in undefined and "__cuda" not in undefined
    run = (
        "import numpy as np, tensorflow as tf, sys\n"
        "ops = tf.load_op_library(sys.argv[1])\n"
        "x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)\n"
        "p = ops.ats_extract_patches(x, [[[1, 2]]], [2, 3], out_type=tf.float32, scale=2)\n"
        "print(p.numpy().ravel().tolist())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", run, str(library)], capture_output=True, text=True, check=True
    )
    assert proc.stdout.split("\n")[-2] == str([12.0, 14.0, 0.0, 20.0, 22.0, 0.0])
