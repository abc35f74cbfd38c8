"""``ats-eval``: accuracy per mode and patch count, checked against direct predictions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from model_ops.export import export_tiny_model, load_model
from model_ops.training.evaluate import evaluate, format_table, main


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    return export_tiny_model(tmp_path_factory.mktemp("eval") / "1", low_scale=0.12, patch_size=(50, 50))


def test_accuracy_matches_direct_predictions(version_dir):
    accuracy = evaluate(str(version_dir), 4, [2, 5], ["sample", "top_k"], seed=3)
    model, _ = load_model(version_dir)
    for (mode, n), value in accuracy.items():
        hits = 0
        for index in range(4):
            layout = make_layout(CanvasSpec(), "test", 3, index)
            out = model.signatures["predict_image"](
                image=tf.constant(render_canvas(layout)),
                n_patches=tf.constant(n),
                seed=tf.constant(index, tf.int64),
                mode=tf.constant(1 if mode == "top_k" else 0),
            )
            hits += int(np.argmax(out["probabilities"]) == layout.label)
        assert value == hits / 4, (mode, n)


def test_table_format():
    table = format_table({("sample", 5): 0.5, ("top_k", 5): 1.0, ("sample", 10): 0.25, ("top_k", 10): 0.0}, 4)
    lines = table.splitlines()
    assert lines[0] == "| inference | 5 patches | 10 patches |"
    assert lines[2] == "| sample | 50.0% | 25.0% |" and lines[3] == "| top_k | 100.0% | 0.0% |"


def test_cli_writes_markdown(version_dir, tmp_path, capsys):
    out = tmp_path / "eval.md"
    assert (
        main(
            [
                "--model",
                str(version_dir),
                "--canvases",
                "2",
                "--patches",
                "3",
                "--modes",
                "top_k",
                "--markdown",
                str(out),
            ]
        )
        == 0
    )
    assert "| top_k |" in capsys.readouterr().out
    assert out.read_text().startswith("| inference | 3 patches |")
