"""The op loader: build record matches the running TensorFlow, the library is
loaded once, and a missing or mismatched build fails with how to rebuild."""

from __future__ import annotations

import json
import subprocess
import sys

import tensorflow as tf

from model_ops import build_info, load_op_library, op_library_version
from model_ops import op_library as loader

# Runs in a fresh process (a library must never load twice): each broken build
# record must stop load_op_library() before tf.load_op_library is reached.
BROKEN_BUILDS = """
import json, pathlib, sys
from model_ops import op_library as loader
tmp = pathlib.Path(sys.argv[1])
original = json.loads(loader.BUILD_INFO_PATH.read_text())
original_library = loader.LIBRARY_PATH
messages = {}
for case, key, value in [("tensorflow", "tensorflow_version", "2.0.0"),
                         ("op", "op_library_version", "0.0.1"), ("missing", None, None),
                         # last: the only case that loads (a library loads once per process)
                         ("patch", "tensorflow_version",
                          ".".join(original["tensorflow_version"].split(".")[:2]) + ".99")]:
    info = dict(original)
    if key:
        info[key] = value
    (tmp / "info.json").write_text(json.dumps(info))
    loader.BUILD_INFO_PATH = tmp / "info.json"
    loader.LIBRARY_PATH = tmp / "missing.so" if case == "missing" else original_library
    try:
        loader.load_op_library()
        messages[case] = None if case != "patch" else "loaded"
    except RuntimeError as err:
        messages[case] = str(err)
print(json.dumps(messages))
"""


def test_build_info_matches_the_running_tensorflow_and_sources():
    info = build_info()
    assert info["tensorflow_version"] == tf.__version__
    assert info["op_library_version"] == loader.VERSION_PATH.read_text().strip()
    assert op_library_version() == info["op_library_version"]
    assert isinstance(info["cuda"], bool) and info["compiler"]


def test_library_is_loaded_once():
    assert load_op_library() is load_op_library()
    assert hasattr(load_op_library(), "ats_extract_patches_grad")


def test_broken_builds_fail_with_how_to_rebuild(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", BROKEN_BUILDS, str(tmp_path)], capture_output=True, text=True, check=True
    )
    messages = json.loads(proc.stdout.splitlines()[-1])
    rebuild = "pip install --no-build-isolation -e ."
    assert f"built with TensorFlow 2.0.0 but TensorFlow {tf.__version__} is running" in messages["tensorflow"]
    assert "version 0.0.1 but the sources are version" in messages["op"]
    assert "is not built" in messages["missing"]
    assert all(rebuild in m for case, m in messages.items() if case != "patch")
    # a TensorFlow patch release keeps the C++ ABI: the same build loads
    assert messages["patch"] == "loaded"
