"""An interrupted stage resumes from its last finished epoch, with one continuous CSV log and clock."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from model_ops.training.run_dir import RunDir


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch: int) -> None:
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


def _fit(run: RunDir, extra: list) -> keras.callbacks.History:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).random((16, 3)).astype("float32")
    return model.fit(x, x[:, :1], epochs=5, verbose=0, callbacks=run.callbacks("stage") + extra)


def test_interrupted_stage_resumes(tmp_path):
    run = RunDir(tmp_path / "run")
    run.fresh_start()
    with pytest.raises(KeyboardInterrupt):
        _fit(run, [_Interrupt(at_epoch=2)])
    resumed = RunDir(tmp_path / "run")
    history = _fit(resumed, [])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    with open(run.stage("stage") / "log.csv") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == [0, 1, 2, 3, 4]
    assert float((run.stage("stage") / "elapsed").read_text()) > 0


def test_existing_run_needs_resume(tmp_path):
    RunDir(tmp_path).stage("features")
    with pytest.raises(FileExistsError, match="--resume"):
        RunDir(tmp_path).fresh_start()
