"""Replays the committed corpus of every coverage-guided fuzz target
(tests/fuzz/atheris_NAME.py, corpus in tests/fuzz/corpus/NAME/) through its
``fuzz_one``: each input atheris found interesting stays a regression test,
without atheris. Also checks that the corpora stay small enough to commit,
and that the runner itself still fuzzes and merges (a few seconds of atheris
on a copy of the decode corpus)."""

from __future__ import annotations

import importlib
import pathlib
import shutil
import subprocess
import sys
import traceback
import warnings

import pytest

from tests.fuzz.atheris_decode import seeds
from tests.fuzz.run import CORPORA, ROOT

TARGETS = sorted(p.stem.removeprefix("atheris_") for p in pathlib.Path(__file__).parent.glob("atheris_*.py"))
MAX_CORPUS_BYTES = 300_000


def corpus(target: str) -> list[pathlib.Path]:
    folder = CORPORA / target
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("target", TARGETS)
def test_every_corpus_input_replays(target):
    files = corpus(target)
    assert files, f"no corpus for {target}: run python -m tests.fuzz.run {target} and commit it"
    fuzz_one = importlib.import_module(f"tests.fuzz.atheris_{target}").fuzz_one
    failures: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about damaged files; the outcome is what counts
        for path in files:
            try:
                fuzz_one(path.read_bytes())
            except Exception as err:
                where = traceback.extract_tb(err.__traceback__)[-1]
                failures[path.name] = f"{type(err).__name__} at {where.filename}:{where.lineno}: {err}"[:300]
    assert not failures, f"{len(failures)} of {len(files)} inputs fail:\n" + "\n".join(
        f"{name}: {error}" for name, error in failures.items()
    )


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_stays_small(target):
    size = sum(path.stat().st_size for path in corpus(target))
    assert 0 < size < MAX_CORPUS_BYTES, f"corpus of {target}: {size} bytes"


def test_the_runner_fuzzes_and_merges(tmp_path):
    """Three seconds of atheris on a copy of the decode corpus: no finding, and
    the merged corpus and the seeds replace the copy."""
    work = tmp_path / "corpus"
    shutil.copytree(CORPORA / "decode", work)
    command = ["-m", "tests.fuzz.run", "decode", "--minutes", "0.05", "--corpus", str(work)]
    done = subprocess.run(
        [sys.executable, *command, "--artifacts", str(tmp_path / "findings")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "findings in" in done.stdout and not any((tmp_path / "findings").iterdir())
    merged = {path.name for path in work.iterdir()}
    assert set(seeds()) <= merged and len(merged) > len(seeds()), sorted(merged)
