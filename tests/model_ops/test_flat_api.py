"""``import model_ops`` is cheap and every public name resolves from it."""

from __future__ import annotations

import json
import subprocess
import sys

import model_ops

LAZY = """
import json, sys
import model_ops
before = "tensorflow" in sys.modules
from model_ops import extract_patches, attention_sampling, load_model, load_op_library
print(json.dumps({"before": before, "after": "tensorflow" in sys.modules,
                  "names": [f.__module__ for f in (extract_patches, attention_sampling, load_model,
                                                   load_op_library)]}))
"""


def test_import_is_lazy_and_names_resolve_from_the_package():
    proc = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["before"] is False, "importing model_ops alone must not load TensorFlow"
    assert result["after"] is True
    assert result["names"] == [
        "model_ops.patch_ops",
        "model_ops.core",
        "model_ops.export",
        "model_ops.op_library",
    ]


def test_every_public_name_resolves_and_is_listed():
    assert sorted(model_ops.__all__) == sorted(model_ops._EXPORTS)  # the list and the lazy table agree
    for name in model_ops.__all__:
        assert getattr(model_ops, name) is not None, name
    assert set(model_ops.__all__) <= set(dir(model_ops))


def test_unknown_names_raise_attribute_error():
    try:
        model_ops.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("model_ops.no_such_name resolved")


def test_load_model_registers_the_op_itself(tmp_path):
    """A fresh process loads and runs an exported version with only ``model_ops.load_model``."""
    from model_ops.export import export_tiny_model

    version = export_tiny_model(tmp_path / "tiny" / "1")
    script = (
        "import numpy as np, tensorflow as tf\n"
        "from model_ops import load_model\n"
        f"model, meta = load_model({str(version)!r})\n"
        "out = model.signatures['predict_image'](image=tf.zeros([64, 64, 1], tf.uint8), "
        "n_patches=tf.constant(3), seed=tf.constant(0, tf.int64), mode=tf.constant(1))\n"
        "print(meta.name, out['offsets'].shape[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert proc.stdout.split()[-2:] == ["tiny", "3"]
