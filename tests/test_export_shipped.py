"""The shipped version ``models/megapixel-digits/1``: loads under the installed versions and classifies."""
from __future__ import annotations

import pathlib

from model_ops.export import load_metadata
from model_ops.training.evaluate import evaluate

VERSION = pathlib.Path(__file__).resolve().parents[1] / "models" / "megapixel-digits" / "1"


def test_shipped_metadata():
    meta = load_metadata(VERSION)
    assert meta.name == "megapixel-digits" and meta.classes == [str(c) for c in range(10)]
    assert (meta.patch_size, meta.n_patches, meta.low_scale, meta.channels) == ([50, 50], 10, 0.12, 1)


def test_shipped_model_is_accurate():
    """50 fresh test canvases, top-k with 10 patches (deterministic). The model scores 94% on
    1000 canvases (bench/results/training.md); at 94%, fewer than 40 of 50 has probability
    about 1.5e-4, so failing this means a broken model or pipeline, not bad luck."""
    accuracy = evaluate(str(VERSION), 50, [10], ["top_k"], seed=777)
    assert accuracy[("top_k", 10)] >= 0.8, accuracy
