"""The fine-tune's schedule and canvases, and which recipe changes a resumed run accepts."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json

import pytest

from model_ops.datasets.batches import CanvasBatches
from model_ops.datasets.megapixel_digits import CanvasSpec
from model_ops.training.cli import TRAINERS, _recipe
from model_ops.training.recipe import FreshCanvases, Recipe, cosine_decay
from model_ops.training.run_dir import RunDir


def test_cosine_decay_goes_from_base_to_floor():
    schedule = cosine_decay(1e-3, epochs=5, floor=0.1).schedule
    rates = [schedule(epoch) for epoch in range(5)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert rates[2] == pytest.approx(0.55e-3)
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_resumed_epoch_draws_the_canvases_of_that_epoch():
    """Keras restarts a resumed fit at epoch k; the canvases must be epoch k's, not epoch 0's again."""

    def batches() -> CanvasBatches:
        return CanvasBatches(CanvasSpec(), "train", 1, n_canvases=4, batch_size=4, fresh_each_epoch=True)

    def positions(source: CanvasBatches) -> list[list[int]]:
        return [layout.xs.tolist() for layout in source.layouts(0)]

    trained = batches()
    for _ in range(3):
        trained.on_epoch_end()
    resumed = batches()
    FreshCanvases(resumed).on_epoch_begin(3)
    assert positions(resumed) == positions(trained)
    assert positions(resumed) != positions(batches())


def _args(**changes) -> argparse.Namespace:
    return argparse.Namespace(**{"seed": 0, "batch_size": None, "scale": 1.0, **changes})


def _saved_run(tmp_path, recipe: Recipe, done: list[str]) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.fresh_start()
    (run.root / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe)))
    for stage in done:
        (run.stage(stage) / "done").write_text("{}")
    return run


def test_resume_may_change_unfinished_stages(tmp_path):
    """A longer fine-tune can reuse a run whose pretraining stages are finished."""
    run = _saved_run(tmp_path, dataclasses.replace(Recipe(), finetune_epochs=4), ["features", "attention"])
    assert _recipe(_args(), run, Recipe, TRAINERS) == Recipe()
    assert json.loads((run.root / "recipe.json").read_text())["finetune_epochs"] == Recipe().finetune_epochs


@pytest.mark.parametrize("change", [{"feature_epochs": 1}, {"attention_lr": 1.0}, {"seed": 5}])
def test_resume_refuses_to_change_finished_stages(tmp_path, change):
    run = _saved_run(tmp_path, dataclasses.replace(Recipe(), **change), ["features", "attention"])
    with pytest.raises(SystemExit, match=r"features|attention"):
        _recipe(_args(), run, Recipe, TRAINERS)
