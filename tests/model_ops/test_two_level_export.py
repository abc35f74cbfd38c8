"""Two-level export: metadata format 2, the staged signatures, a fresh process equals the in-process run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model_ops.data import InMemoryImage
from model_ops.export import TWO_LEVEL_FORMAT, load_metadata, load_model
from model_ops.two_level_export import (
    export_two_level_model,
    tiny_two_level_metadata,
    tiny_two_level_networks,
)
from model_ops.two_level_pipeline import SavedModelStages, run_two_level
from tests.model_ops.test_export import _copy_with
from tests.support import REPO_ROOT

SIGNATURES = {
    "coarse_attention": "x_coarse",
    "fine_attention": "region_views",
    "features": "patches",
    "head": "features",
}
FIELDS = ("coarse_attention", "region_offsets", "fine_attention", "patch_offsets", "probabilities")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    meta = tiny_two_level_metadata(replace_regions=True)
    nets = tiny_two_level_networks(meta, seed=2)
    path = export_two_level_model(*nets.networks, meta, tmp_path_factory.mktemp("repo") / "two" / "1")
    return path, nets


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (700, 450, 1), dtype=np.uint8)


def test_metadata_is_format_2_with_a_two_level_section(exported):
    path, _ = exported
    raw = json.loads((path / "ats_model.json").read_text())
    assert raw["format"] == TWO_LEVEL_FORMAT and raw["tensorflow_version"] == tf.__version__
    assert raw["two_level"] == {
        "region_size": [64, 64],
        "fine_scale": 0.25,
        "n_regions": 3,
        "max_regions": 8,
        "replace_regions": True,
        "fine_receptive_field": 0,
    }
    meta = load_metadata(path)
    assert meta.two_level.fine_view_shape() == (16, 16)
    assert json.loads(meta.to_json()) == raw


def test_old_and_one_level_metadata_still_load():
    shipped_files = sorted((REPO_ROOT / "models" / "megapixel-digits").glob("*/ats_model.json"))
    assert shipped_files
    for shipped in shipped_files:
        meta = load_metadata(shipped.parent)
        assert meta.format == 1 and meta.two_level is None
        assert "two_level" not in json.loads(meta.to_json())  # one-level files keep their keys


def test_inconsistent_metadata_is_refused(exported, tmp_path):
    path, _ = exported
    with pytest.raises(ValueError, match="two_level"):
        load_metadata(_copy_with(path, tmp_path / "a", two_level=None))
    with pytest.raises(ValueError, match="two_level"):
        load_metadata(_copy_with(path, tmp_path / "b", format=1))
    raw = json.loads((path / "ats_model.json").read_text())["two_level"]
    del raw["n_regions"]
    with pytest.raises(ValueError, match="n_regions"):
        load_metadata(_copy_with(path, tmp_path / "c", two_level=raw))


def test_the_signatures_take_uint8_and_a_one_level_model_is_refused(exported):
    path, nets = exported
    loaded, meta = load_model(path)
    for name, arg in SIGNATURES.items():
        dtype = loaded.signatures[name].structured_input_signature[1][arg].dtype
        assert dtype == (tf.float32 if name == "head" else tf.uint8), name
    one_level = dataclasses.replace(meta, two_level=None)
    with pytest.raises(ValueError, match="one-level"):
        run_two_level(nets, InMemoryImage(image()), one_level)
    with pytest.raises(ValueError, match="one-level"):
        export_two_level_model(*nets.networks, one_level, path.parent / "2")
    with pytest.raises(ValueError, match="n_regions must be between 1 and 8"):
        run_two_level(nets, InMemoryImage(image()), meta, n_regions=9)


def results(stages, meta) -> dict:
    """Both modes on one image, as JSON-able lists."""
    out = {}
    for mode in ("sample", "top_k"):
        result = run_two_level(stages, InMemoryImage(image(1)), meta, mode=mode, seed=17)
        out[mode] = {name: getattr(result, name).numpy().tolist() for name in FIELDS}
    return out


_FRESH = """
import json, sys
from model_ops import load_model
from model_ops.two_level_pipeline import SavedModelStages
from tests.model_ops.test_two_level_export import results
loaded, meta = load_model(sys.argv[1])
print(json.dumps(results(SavedModelStages(loaded), meta)))
"""


@pytest.mark.slow
def test_a_fresh_process_runs_the_staged_signatures_as_the_networks_run_here(exported):
    path, nets = exported
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    here = results(nets, load_metadata(path))
    for mode in here:
        for name in FIELDS:
            want, got = np.array(here[mode][name]), np.array(fresh[mode][name])
            if name.endswith("offsets"):
                np.testing.assert_array_equal(got, want, err_msg=f"{mode} {name}")
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8, err_msg=f"{mode} {name}")
    assert fresh["sample"]["patch_offsets"] != fresh["top_k"]["patch_offsets"]


def test_saved_model_stages_match_in_process(exported):
    """The same comparison without a new process (fast, runs everywhere)."""
    path, nets = exported
    loaded, meta = load_model(path)
    got, want = results(SavedModelStages(loaded), meta), results(nets, meta)
    for mode in want:
        np.testing.assert_array_equal(got[mode]["patch_offsets"], want[mode]["patch_offsets"])
        np.testing.assert_allclose(got[mode]["probabilities"], want[mode]["probabilities"], rtol=1e-5)
