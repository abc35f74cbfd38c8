"""A training run on disk: one folder per stage with its CSV log, Keras backup and final weights.

A stage is finished when its ``done`` marker exists; ``--resume`` skips
finished stages and lets Keras ``BackupAndRestore`` continue an interrupted
one from its last completed epoch.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import keras

WEIGHT_FILES = ("attention", "features", "head")


@dataclasses.dataclass
class Nets:
    """The three trained parts of an attention-sampling model."""

    attention: keras.Model
    features: keras.Model
    head: keras.Model

    def save(self, directory: pathlib.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in WEIGHT_FILES:
            getattr(self, name).save_weights(directory / f"{name}.weights.h5")

    def load(self, directory: pathlib.Path) -> None:
        for name in WEIGHT_FILES:
            getattr(self, name).load_weights(directory / f"{name}.weights.h5")


class _StageClock(keras.callbacks.Callback):
    """Writes the stage's wall time so far after every epoch, so it survives interruptions."""

    def __init__(self, path: pathlib.Path, base: float, start: float) -> None:
        super().__init__()
        self.path, self.base, self.start = path, base, start

    def seconds(self) -> float:
        return self.base + time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.path.write_text(f"{self.seconds():.1f}\n")


class RunDir:
    """Paths and stage bookkeeping of one run folder."""

    def __init__(self, root: str | pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self._clocks: dict[str, _StageClock] = {}

    def start_clock(self, name: str) -> None:
        """Start timing a stage, adding the time its interrupted sessions already spent."""
        path = self.stage(name) / "elapsed"
        base = float(path.read_text()) if path.exists() else 0.0
        self._clocks[name] = _StageClock(path, base, time.perf_counter())

    def seconds(self, name: str) -> float:
        """Wall time of a stage: recorded if finished, else running clock."""
        if self.is_done(name):
            return json.loads((self.root / name / "done").read_text())["seconds"]
        return self._clocks[name].seconds()

    def stage(self, name: str) -> pathlib.Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, name: str) -> bool:
        return (self.root / name / "done").exists()

    def finish(self, name: str, nets: Nets, summary: dict) -> float:
        """Save the nets as this stage's result, mark the stage finished; returns its wall time."""
        stage = self.stage(name)
        nets.save(stage / "weights")
        seconds = self.seconds(name)
        (stage / "done").write_text(json.dumps({"seconds": seconds, "last_epoch": summary}, indent=2) + "\n")
        return seconds

    def callbacks(self, name: str) -> list[keras.callbacks.Callback]:
        """CSV log (appended across resumes) and an epoch-level backup for ``--resume``."""
        stage = self.stage(name)
        if name not in self._clocks:
            self.start_clock(name)
        return [
            keras.callbacks.BackupAndRestore(str(stage / "backup")),
            keras.callbacks.CSVLogger(str(stage / "log.csv"), append=True),
            self._clocks[name],
        ]

    def fresh_start(self) -> None:
        """Refuse to overwrite a previous run unless resuming."""
        if self.root.exists() and any(self.root.iterdir()):
            raise FileExistsError(
                f"{self.root} already holds a run; pass --resume to continue it or choose another --run-dir"
            )
        self.root.mkdir(parents=True, exist_ok=True)
