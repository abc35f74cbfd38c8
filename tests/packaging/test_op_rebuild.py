"""The op build keeps a library whose record matches the installed TensorFlow,
the op sources (a hash of model_ops/cc/) and the CUDA choice, so building a
wheel or reinstalling does not compile again; any mismatch rebuilds."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "model_ops" / "cc" / "build.py"


class Compiled(Exception):
    """Raised instead of compiling: the build decided to rebuild."""


@pytest.fixture()
def build(monkeypatch):
    """model_ops/cc/build.py imported by path (as setup.py does), its compiler
    replaced by one that raises Compiled."""
    spec = importlib.util.spec_from_file_location("ats_op_build_record", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def refuse(*args, **kwargs):
        raise Compiled

    monkeypatch.setattr(module, "_compile_cpu", refuse)
    return module


def current_record(build) -> dict:
    """What a CPU-only build for this TensorFlow and these sources records."""
    import tensorflow as tf

    return {
        "tensorflow_version": tf.__version__,
        "op_library_version": build.op_library_version(),
        "sources_sha256": build.sources_digest(),
        "cuda": False,
        "cuda_version": None,
        "cuda_archs": [],
        "compiler": "g++ (test)",
    }


def built(out: pathlib.Path, build, **changes) -> pathlib.Path:
    """A stand-in library with its record (``changes`` applied) in ``out``."""
    library = out / build.LIBRARY_NAME
    library.write_bytes(b"not really a library")
    (out / build.BUILD_INFO_NAME).write_text(json.dumps({**current_record(build), **changes}))
    return library


def test_matching_build_is_kept(build, tmp_path):
    library = built(tmp_path, build)
    info = build.build_op_library(output_dir=tmp_path, cuda="0", verbose=False)
    assert info == current_record(build)
    assert library.read_bytes() == b"not really a library"


@pytest.mark.parametrize(
    "changes",
    [
        {"tensorflow_version": "2.20.0"},
        {"sources_sha256": "0" * 64},
        {"cuda": True, "cuda_version": "12.5", "cuda_archs": [80]},
        {"op_library_version": "0.0.1"},
    ],
    ids=["tensorflow", "sources", "cuda", "op-version"],
)
def test_any_mismatch_rebuilds(build, tmp_path, changes):
    built(tmp_path, build, **changes)
    with pytest.raises(Compiled):
        build.build_op_library(output_dir=tmp_path, cuda="0", verbose=False)


def test_missing_library_or_record_and_force_rebuild(build, tmp_path):
    built(tmp_path, build)
    with pytest.raises(Compiled):
        build.build_op_library(output_dir=tmp_path, cuda="0", verbose=False, force=True)
    (tmp_path / build.LIBRARY_NAME).unlink()
    with pytest.raises(Compiled):
        build.build_op_library(output_dir=tmp_path, cuda="0", verbose=False)
    built(tmp_path, build)
    (tmp_path / build.BUILD_INFO_NAME).write_text("{not json")
    with pytest.raises(Compiled):
        build.build_op_library(output_dir=tmp_path, cuda="0", verbose=False)


def test_sources_digest_follows_every_file_under_cc_but_not_bytecode(build, tmp_path, monkeypatch):
    sources = tmp_path / "cc"
    shutil.copytree(REPO / "model_ops" / "cc", sources, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(build, "CC_DIR", sources)
    original = build.sources_digest()
    (sources / "__pycache__").mkdir()
    (sources / "__pycache__" / "build.cpython-311.pyc").write_bytes(b"bytecode")
    assert build.sources_digest() == original
    header = sources / "kernels" / "extract_patches_gpu.h"
    header.write_text(header.read_text() + "\n// edited\n")
    assert build.sources_digest() != original
