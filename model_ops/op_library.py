"""Load the compiled patch-op library, refusing one built for another TensorFlow.

A custom op links against TensorFlow's C++ ABI, which holds within a
major.minor release (patch releases keep it) and breaks across minors; a
mismatch can crash the process inside ``tf.load_op_library``, so the build
record (``model_ops/_build_info.json``) is checked first. Call
``load_op_library()`` before loading a SavedModel that uses the op
(:func:`model_ops.load_model` does).
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from typing import Any

import tensorflow as tf

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
LIBRARY_PATH = PACKAGE_DIR / "_patch_ops.so"
BUILD_INFO_PATH = PACKAGE_DIR / "_build_info.json"
VERSION_PATH = PACKAGE_DIR / "cc" / "VERSION"
REBUILD = "rebuild it with `pip install --no-build-isolation -e .` (or `python model_ops/cc/build.py`)"


def release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "2.21.0" or "2.21.0rc1"."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a version number: {version!r}")
    return int(match[1]), int(match[2])


def build_info() -> dict[str, Any]:
    """What the library was built against (TensorFlow, op version, CUDA, compiler)."""
    if not LIBRARY_PATH.exists() or not BUILD_INFO_PATH.exists():
        raise RuntimeError(f"the patch-op library {LIBRARY_PATH.name} is not built: {REBUILD}")
    return json.loads(BUILD_INFO_PATH.read_text())


def op_library_version() -> str:
    """Version of the op interface this library implements (recorded in exported models)."""
    return build_info()["op_library_version"]


@functools.cache
def load_op_library():
    """The loaded op module (cached: a library must be loaded once per process)."""
    info = build_info()
    if release(info["tensorflow_version"]) != release(tf.__version__):
        raise RuntimeError(
            f"the patch-op library was built with TensorFlow {info['tensorflow_version']} "
            f"but TensorFlow {tf.__version__} is running: {REBUILD}"
        )
    expected = VERSION_PATH.read_text().strip()
    if info["op_library_version"] != expected:
        raise RuntimeError(
            f"the patch-op library is version {info['op_library_version']} but the sources "
            f"are version {expected}: {REBUILD}"
        )
    return tf.load_op_library(str(LIBRARY_PATH))
