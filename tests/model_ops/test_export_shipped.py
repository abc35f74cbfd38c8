"""The shipped versions of ``models/megapixel-digits``: each loads under the
installed versions and classifies."""

from __future__ import annotations

import pytest

from model_ops.export import load_metadata
from model_ops.training.evaluate import evaluate
from tests.support import REPO_ROOT, version_names

MODEL = REPO_ROOT / "models" / "megapixel-digits"
# Lowest count of 50 fixed test canvases (top-k, 10 patches) each version must read.
# Version 1 scores 94% on 1000 canvases: fewer than 40 of 50 has probability about
# 1.5e-4 at 94%. Version 2 scores 97% (bench/results/training.md): fewer than 44 of 50
# has probability about 3e-4 at 97%. Failing means a broken model or pipeline, not bad luck.
MIN_CORRECT = {"1": 40, "2": 44}


def test_every_version_is_checked():
    """The repository serves the latest version; it must be one listed here."""
    assert version_names(MODEL) == sorted(MIN_CORRECT, key=int)


@pytest.mark.parametrize("version", sorted(MIN_CORRECT))
def test_shipped_metadata(version):
    meta = load_metadata(MODEL / version)
    assert meta.name == "megapixel-digits" and meta.classes == [str(c) for c in range(10)]
    assert (meta.patch_size, meta.n_patches, meta.low_scale, meta.channels) == ([50, 50], 10, 0.12, 1)


@pytest.mark.parametrize("version", sorted(MIN_CORRECT))
def test_shipped_model_is_accurate(version):
    """50 fresh test canvases, top-k with 10 patches (deterministic)."""
    accuracy = evaluate(str(MODEL / version), 50, [10], ["top_k"], seed=777)
    assert accuracy[("top_k", 10)] * 50 >= MIN_CORRECT[version], accuracy
