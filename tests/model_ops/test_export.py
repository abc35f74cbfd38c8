"""Exported versions: signatures, staged path == predict_image, fresh-process reload, version checks."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model_ops import expectation, geometry, sampling
from model_ops.export import (
    MODE_SAMPLE,
    MODE_TOP_K,
    IncompatibleModelError,
    check_compatible,
    export_tiny_model,
    latest_version,
    load_metadata,
    load_model,
)
from model_ops.op_library import op_library_version
from model_ops.patch_ops import extract_patches
from tests.support import REPO_ROOT


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("repo") / "tiny" / "1", n_patches=5)


@pytest.fixture(scope="module")
def model(version_dir):
    return load_model(version_dir)


def _image(seed: int = 0, shape=(203, 157, 1)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _predict(loaded, image, n_patches=5, seed=7, mode=MODE_SAMPLE):
    out = loaded.signatures["predict_image"](
        image=tf.constant(image),
        n_patches=tf.constant(n_patches),
        seed=tf.constant(seed, tf.int64),
        mode=tf.constant(mode),
    )
    return {k: v.numpy() for k, v in out.items()}


def test_metadata_file(version_dir):
    raw = json.loads((version_dir / "ats_model.json").read_text())
    assert raw["tensorflow_version"] == tf.__version__
    assert raw["op_library_version"]
    for key in (
        "format",
        "name",
        "classes",
        "low_scale",
        "low_size",
        "patch_size",
        "n_patches",
        "max_patches",
        "replace",
        "receptive_field",
        "channels",
        "input_dtype",
        "pixel_scale",
        "feature_dim",
    ):
        assert key in raw, key
    assert raw["input_dtype"] == "uint8" and raw["n_patches"] == 5


def test_signatures_take_uint8(model):
    loaded, _ = model
    for name, arg in (("attention", "x_low"), ("features", "patches"), ("predict_image", "image")):
        spec = loaded.signatures[name].structured_input_signature[1][arg]
        assert spec.dtype == tf.uint8, name
    assert loaded.signatures["head"].structured_input_signature[1]["features"].dtype == tf.float32


@pytest.mark.parametrize("mode", [MODE_SAMPLE, MODE_TOP_K])
def test_staged_path_equals_predict_image(model, mode):
    loaded, meta = model
    image = _image(1)
    full = _predict(loaded, image, n_patches=5, seed=11, mode=mode)
    low_size = [round(d * meta.low_scale) for d in image.shape[:2]]
    from model_ops.lowres import low_resolution_view

    x_low = low_resolution_view(image[None], low_size)
    attention = loaded.signatures["attention"](x_low=x_low)["attention"]
    np.testing.assert_allclose(attention[0].numpy(), full["attention"], rtol=1e-6, atol=1e-9)
    cells, probs = sampling.sample_positions(
        attention, 5, meta.replace, mode="top_k" if mode == MODE_TOP_K else "sample", seed=11
    )
    np.testing.assert_array_equal(cells[0].numpy(), full["cells"])
    offsets = geometry.cells_to_offsets(
        cells, low_size, image.shape[:2], attention.shape[1:], meta.patch_size, meta.receptive_field
    )
    np.testing.assert_array_equal(offsets[0].numpy(), full["offsets"])
    patches = extract_patches(image[None], offsets, meta.patch_size)  # uint8, as a server cuts them
    features = loaded.signatures["features"](patches=tf.reshape(patches, [-1, *meta.patch_size, 1]))[
        "features"
    ]
    estimate = expectation.aggregate(features[None], probs, meta.replace)
    probabilities = loaded.signatures["head"](features=estimate)["probabilities"][0].numpy()
    np.testing.assert_allclose(probabilities, full["probabilities"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs[0].numpy(), full["patch_attention"], rtol=1e-6)


def test_predict_image_outputs(model):
    loaded, _ = model
    out = _predict(loaded, _image(2), n_patches=6)
    assert out["probabilities"].shape == (10,) and abs(out["probabilities"].sum() - 1) < 1e-5
    assert out["attention"].shape == (25, 20) and abs(out["attention"].sum() - 1) < 1e-5
    assert out["offsets"].shape == (6, 2) and out["offsets"].dtype == np.int32
    assert out["cells"].shape == (6, 2) and out["patch_attention"].shape == (6,)
    assert len({tuple(c) for c in out["cells"]}) == 6  # without replacement
    np.testing.assert_allclose(out["patch_attention"], out["attention"][tuple(out["cells"].T)], rtol=1e-6)


def test_seeds_and_modes(model):
    loaded, _ = model
    image = _image(3)
    a, b = _predict(loaded, image, seed=5), _predict(loaded, image, seed=5)
    np.testing.assert_array_equal(a["offsets"], b["offsets"])
    others = [_predict(loaded, image, seed=s)["offsets"] for s in range(6, 12)]
    assert any(not np.array_equal(a["offsets"], o) for o in others)
    top = _predict(loaded, image, mode=MODE_TOP_K)
    order = np.argsort(-top["attention"].ravel(), kind="stable")[:5]
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(top["cells"].T), top["attention"].shape), order)


def test_n_patches_is_bounded(model):
    loaded, meta = model
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_patches"):
        _predict(loaded, _image(4), n_patches=meta.max_patches + 1)


_FRESH = """
import json, sys, numpy as np, tensorflow as tf
path, load_op = sys.argv[1], sys.argv[2] == "1"
if load_op:
    from model_ops.op_library import load_op_library
    load_op_library()
loaded = tf.saved_model.load(path)
image = np.random.default_rng(1).integers(0, 256, (203, 157, 1), dtype=np.uint8)
out = loaded.signatures["predict_image"](image=image, n_patches=tf.constant(5),
                                         seed=tf.constant(11, tf.int64), mode=tf.constant(0))
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
"""


def _fresh_process(version_dir, load_op: bool) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return subprocess.run(
        [sys.executable, "-c", _FRESH, str(version_dir), "1" if load_op else "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_fresh_process_reload(model, version_dir):
    done = _fresh_process(version_dir, load_op=True)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    here = _predict(model[0], _image(1), n_patches=5, seed=11, mode=MODE_SAMPLE)
    np.testing.assert_array_equal(np.array(fresh["offsets"]), here["offsets"])
    np.testing.assert_allclose(np.array(fresh["probabilities"]), here["probabilities"], rtol=1e-6)


@pytest.mark.slow
def test_fresh_process_needs_the_op_library(version_dir):
    done = _fresh_process(version_dir, load_op=False)
    assert done.returncode != 0
    assert "AtsExtractPatches" in done.stderr or "not registered" in done.stderr


def _copy_with(version_dir, tmp_path, **changes) -> pathlib.Path:
    copy = tmp_path / "copy" / "1"
    shutil.copytree(version_dir, copy)
    raw = json.loads((copy / "ats_model.json").read_text())
    raw.update(changes)
    (copy / "ats_model.json").write_text(json.dumps(raw))
    return copy


@pytest.mark.parametrize("exported", ["3.0.0", "1.15.0", "2.99.0"])
def test_tensorflow_of_another_major_or_a_newer_minor_is_refused(version_dir, tmp_path, exported):
    copy = _copy_with(version_dir, tmp_path, tensorflow_version=exported)
    with pytest.raises(
        IncompatibleModelError, match=rf"TensorFlow {re.escape(exported)} .*TensorFlow " + tf.__version__
    ):
        load_model(copy)


@pytest.mark.parametrize("exported", ["2.0.0", "2.21.0", "2.21.9", "2.21.0rc1"])
def test_tensorflow_patch_releases_and_older_minors_are_accepted(version_dir, tmp_path, exported):
    """A SavedModel of an older or equal TensorFlow 2 release loads (TensorFlow's own promise)."""
    major, minor = (int(v) for v in tf.__version__.split(".")[:2])
    assert (major, minor) >= (2, 21)
    check_compatible(load_metadata(_copy_with(version_dir, tmp_path, tensorflow_version=exported)))


@pytest.mark.parametrize("needed", ["0.0.1", "2.0.0", "1.2.0"])
def test_op_library_mismatch_is_refused(version_dir, tmp_path, needed):
    """Another major of the op interface, or a newer minor than installed, is refused."""
    assert op_library_version() == "1.1.0"
    copy = _copy_with(version_dir, tmp_path, op_library_version=needed)
    with pytest.raises(IncompatibleModelError, match=rf"op library {re.escape(needed)}"):
        check_compatible(load_metadata(copy))


def test_op_library_patch_release_is_accepted(version_dir, tmp_path):
    check_compatible(load_metadata(_copy_with(version_dir, tmp_path, op_library_version="1.1.7")))


def test_bad_metadata(version_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("ats_model.json")):
        load_metadata(tmp_path)
    with pytest.raises(ValueError, match="format"):
        load_metadata(_copy_with(version_dir, tmp_path, format=99))


def test_versions_are_immutable(version_dir):
    with pytest.raises(FileExistsError, match="immutable"):
        export_tiny_model(version_dir)


def test_latest_version_is_the_highest_integer(tmp_path):
    for name in ("2", "10", "9", "weights"):
        (tmp_path / name).mkdir()
    (tmp_path / "11").write_text("a file, not a version")
    assert latest_version(tmp_path) == tmp_path / "10"
    with pytest.raises(FileNotFoundError, match="no integer version"):
        latest_version(tmp_path / "weights")
