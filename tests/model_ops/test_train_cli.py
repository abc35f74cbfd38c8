"""``ats-train`` end to end on a tiny budget: stages, logs, pictures, export, resume."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from model_ops.export import MODE_TOP_K, load_model
from model_ops.training.cli import main

ARGS = ["megapixel-digits", "--scale", "0.01", "--batch-size", "8", "--verbose", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    assert main([*ARGS, "--run-dir", str(root / "run"), "--export", str(root / "model" / "1")]) == 0
    return root


@pytest.mark.slow
def test_run_folder(run):
    folder = run / "run"
    for stage in ("features", "attention", "finetune"):
        assert (folder / stage / "done").exists()
        assert (folder / stage / "log.csv").read_text().startswith("epoch,")
        assert Image.open(folder / stage / "curves.png").size[1] == 340
        for net in ("attention", "features", "head"):
            assert (folder / stage / "weights" / f"{net}.weights.h5").exists()
    assert Image.open(folder / "attention.png").size[0] > 900
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["total_seconds"] == pytest.approx(sum(summary["stage_seconds"].values()))


@pytest.mark.slow
def test_exported_model_runs(run):
    model, metadata = load_model(run / "model" / "1")
    assert metadata.name == "megapixel-digits" and metadata.patch_size == [50, 50]
    assert metadata.low_scale == 0.12 and metadata.n_patches == 10 and metadata.replace is False
    image = np.zeros((1500, 1500, 1), np.uint8)
    out = model.signatures["predict_image"](
        image=image, n_patches=tf.constant(20), seed=tf.constant(0, tf.int64), mode=tf.constant(MODE_TOP_K)
    )
    assert out["attention"].shape == (180, 180) and out["offsets"].shape == (20, 2)


@pytest.mark.slow
def test_resume_skips_finished_stages(run, capsys):
    assert main([*ARGS, "--run-dir", str(run / "run"), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("already done") == 3


@pytest.mark.slow
def test_resume_with_other_arguments_is_refused(run):
    with pytest.raises(SystemExit, match=re.escape("recipe.json")):
        main(
            [
                "megapixel-digits",
                "--scale",
                "0.02",
                "--batch-size",
                "8",
                "--run-dir",
                str(run / "run"),
                "--resume",
            ]
        )


@pytest.mark.slow
def test_fresh_run_refuses_existing_folder(run):
    with pytest.raises(FileExistsError):
        main([*ARGS, "--run-dir", str(run / "run")])
