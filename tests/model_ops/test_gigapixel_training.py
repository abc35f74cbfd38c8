"""``ats-train gigapixel-digits`` end to end on a tiny budget; its export predicts in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from model_ops.export import load_metadata
from model_ops.training import gigapixel
from model_ops.training.cli import main
from tests.support import REPO_ROOT

ONE_LEVEL = REPO_ROOT / "models" / "megapixel-digits" / "weights" / "2"
ARGS = ["gigapixel-digits", "--scale", "0.01", "--batch-size", "4", "--verbose", "0"]

PREDICT = """
import json, sys
import numpy as np
from model_ops.datasets.gigapixel_digits import LayoutImage, gigapixel_spec
from model_ops.datasets.megapixel_digits import make_layout
from model_ops.export import load_model
from model_ops.two_level_pipeline import SavedModelStages, run_two_level

model, metadata = load_model(sys.argv[1])
layout = make_layout(gigapixel_spec(10_000), "test", 5, 0)
result = run_two_level(SavedModelStages(model), LayoutImage(layout), metadata, mode="top_k")
print(json.dumps({
    "probabilities": result.probabilities.numpy().tolist(),
    "regions": result.region_offsets.numpy().tolist(),
    "patches": result.patch_offsets.numpy().tolist(),
    "fine": list(result.fine_attention.shape),
}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gigapixel")
    argv = [*ARGS, "--run-dir", str(root / "run"), "--export", str(root / "model" / "1")]
    assert main([*argv, "--one-level-weights", str(ONE_LEVEL)]) == 0
    return root


@pytest.mark.slow
def test_run_folder(run):
    folder = run / "run"
    for stage in gigapixel.STAGES:
        assert (folder / stage / "done").exists()
        assert (folder / stage / "log.csv").read_text().startswith("epoch,")
        for net in gigapixel.NET_NAMES:
            assert (folder / stage / "weights" / f"{net}.weights.h5").exists()
    assert Image.open(folder / "attention.png").size[0] > 1000
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["stage_seconds"]) == set(gigapixel.STAGES)
    recipe = json.loads((folder / "recipe.json").read_text())
    full = gigapixel.GigapixelRecipe()
    assert recipe["coarse_canvases"] == round(full.coarse_canvases * 0.01) < full.coarse_canvases
    assert recipe["fine_epochs"] == 1


@pytest.mark.slow
def test_export_is_a_two_level_version(run):
    metadata = load_metadata(run / "model" / "1")
    assert metadata.format == 2 and metadata.name == "gigapixel-digits"
    assert metadata.low_scale == 1 / 64 and metadata.patch_size == [50, 50]
    assert metadata.two_level.region_size == [2048, 2048] and metadata.two_level.fine_scale == 1 / 8
    assert metadata.two_level.fine_view_shape() == (256, 256)


@pytest.mark.slow
def test_export_predicts_in_a_fresh_process(run):
    out = subprocess.run(
        [sys.executable, "-c", PREDICT, str(run / "model" / "1")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    probabilities = np.array(result["probabilities"])
    assert probabilities.shape == (1, 10) and abs(probabilities.sum() - 1) < 1e-4
    k, n = gigapixel.GigapixelRecipe.n_regions, gigapixel.GigapixelRecipe.n_patches
    assert np.array(result["regions"]).shape == (1, k, 2)
    assert np.array(result["patches"]).shape == (1, k, n, 2)
    assert result["fine"] == [1, k, 256, 256]
    regions = np.array(result["regions"])[0][:, None]
    inside = np.array(result["patches"])[0] - regions
    assert (inside >= -25).all() and (inside <= 2048 - 25).all()  # patches centred in their region


@pytest.mark.slow
def test_resume_skips_finished_stages(run, capsys):
    argv = [*ARGS, "--run-dir", str(run / "run"), "--resume", "--one-level-weights", str(ONE_LEVEL)]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already done") == len(gigapixel.STAGES)
