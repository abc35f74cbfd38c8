"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

    python -m tests.fuzz.run decode --minutes 10

Target ``NAME`` is the module ``tests.fuzz.atheris_NAME``, which defines
``fuzz_one(data: bytes) -> None`` (raises on a finding) and
``seeds() -> dict[str, bytes]``; its corpus is tests/fuzz/corpus/NAME/
(filled with the seeds when empty). A run fuzzes a copy of the corpus, then
libFuzzer's merge keeps the smallest set of inputs that covers everything
reached (named by their SHA-1); that set and the seeds (by name) replace the
corpus: commit it, and tests/fuzz/test_fuzz_corpus.py replays it in CI.
Findings are written to the artifact directory printed at the end, and the
exit status is libFuzzer's (non-zero on a finding).

Pillow, the service and tifffile are instrumented, so coverage of their
Python code guides the search; their C decoders are exercised but not seen.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPORA = pathlib.Path(__file__).resolve().parent / "corpus"
INSTRUMENTED = ["PIL", "service", "tifffile", "tests.fuzz"]
# libFuzzer's limits: seconds for one input, resident memory of the process,
# and input size (the seeds are a few KB; larger inputs only slow the search).
PER_INPUT_TIMEOUT_S = 20
RSS_LIMIT_MB = 4096
MAX_INPUT_BYTES = 64 << 10


def _inner_command(target: str) -> str:
    """How libFuzzer re-runs this target in a subprocess (merge does): a shell command."""
    return f"{shlex.quote(sys.executable)} -m tests.fuzz.run {shlex.quote(target)} --"


def _load_instrumented(target: str) -> ModuleType:
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        module = importlib.import_module(f"tests.fuzz.atheris_{target}")
        from PIL import Image

        Image.init()  # Pillow imports its format plugins lazily: load them here, instrumented
    return module


def _libfuzzer(target: str, flags: list[str]) -> None:
    """Inside the fuzzing process: hand ``fuzz_one`` and ``flags`` to libFuzzer (never returns)."""
    import atheris

    warnings.simplefilter("ignore")  # Pillow warns about most damaged files: millions of lines
    module = _load_instrumented(target)
    atheris.Setup([_inner_command(target), *flags], module.fuzz_one)
    atheris.Fuzz()


def _run_libfuzzer(target: str, *flags: str) -> int:
    return subprocess.run([*shlex.split(_inner_command(target)), *flags], cwd=ROOT).returncode


def _write_seeds(seeds: dict[str, bytes], corpus: pathlib.Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)


def _replace_corpus(corpus: pathlib.Path, merged: pathlib.Path, seeds: dict[str, bytes]) -> None:
    """The seeds and ``merged`` become the corpus (the seeds stay, named, even
    when merging found their coverage elsewhere: one valid file per format)."""
    for old in corpus.iterdir():
        old.unlink()
    _write_seeds(seeds, corpus)
    known = {hashlib.sha1(data).hexdigest() for data in seeds.values()}
    for new in merged.iterdir():
        if new.name not in known:
            shutil.copyfile(new, corpus / new.name)


def fuzz(target: str, minutes: float, corpus: pathlib.Path, artifacts: pathlib.Path) -> int:
    """Fuzz ``target`` for ``minutes``, then minimise ``corpus``; libFuzzer's exit status."""
    module = importlib.import_module(f"tests.fuzz.atheris_{target}")
    if not corpus.is_dir() or not any(corpus.iterdir()):
        _write_seeds(module.seeds(), corpus)
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        work, merged = pathlib.Path(scratch, "work"), pathlib.Path(scratch, "merged")
        shutil.copytree(corpus, work)
        merged.mkdir()
        status = _run_libfuzzer(
            target,
            str(work),
            f"-max_total_time={max(1, round(minutes * 60))}",
            f"-timeout={PER_INPUT_TIMEOUT_S}",
            f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={MAX_INPUT_BYTES}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
        )
        if _run_libfuzzer(target, "-merge=1", str(merged), str(work)) == 0 and any(merged.iterdir()):
            _replace_corpus(corpus, merged, module.seeds())
    size = sum(f.stat().st_size for f in corpus.iterdir())
    findings = sorted(artifacts.iterdir())
    print(f"corpus {corpus}: {len(list(corpus.iterdir()))} inputs, {size} bytes")
    print(f"findings in {artifacts}: {len(findings)}", *findings, sep="\n  ")
    return status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--" in args:  # the fuzzing process itself, started by fuzz() or by libFuzzer's merge
        split = args.index("--")
        _libfuzzer(args[0], args[split + 1 :])
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n")[0])
    parser.add_argument("target", help="NAME of tests/fuzz/atheris_NAME.py (decode, tiles)")
    parser.add_argument("--minutes", type=float, default=5.0, help="fuzzing time (default 5)")
    parser.add_argument(
        "--corpus", type=pathlib.Path, default=None, help="corpus folder (default: tests/fuzz/corpus/TARGET)"
    )
    parser.add_argument(
        "--artifacts", type=pathlib.Path, default=None, help="where findings go (default: a new temp dir)"
    )
    options = parser.parse_args(args)
    corpus = options.corpus or CORPORA / options.target
    artifacts = options.artifacts or pathlib.Path(tempfile.mkdtemp(prefix=f"fuzz-{options.target}-findings-"))
    return fuzz(options.target, options.minutes, corpus.resolve(), artifacts.resolve())


if __name__ == "__main__":
    sys.exit(main())
