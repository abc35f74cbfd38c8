"""Warm-up traces every path a request can take, so no client's first request pays for it."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

from tests.support import REPO_ROOT

# Run in a fresh process: the traced functions are shared by the whole process,
# and an earlier test could have traced them already.
CHECK = textwrap.dedent(
    """
    import sys
    import numpy as np
    from service.models.servable import load_servable
    from service.models.warmup import warm_up
    from service.pipeline import aggregate, runner, sampling
    from service.pipeline.payload import TileRef
    from service.pipeline.sources import SourceLimits, SourceRegistry
    from service.tiles import TileOpener
    from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout
    from model_ops.datasets.writers import write_tiff

    model_dir, data = sys.argv[1], sys.argv[2]
    write_tiff(make_layout(CanvasSpec(height=900, width=700), "test", 3, 0), data + "/slide.tif")
    servable = load_servable("tiny", 1, model_dir)
    if sys.argv[3] == "warm":
        warm_up(servable)
    traced = lambda: (
        sampling._positions.experimental_get_tracing_count(),
        aggregate._estimate.experimental_get_tracing_count(),
    )
    before = traced()
    sources = SourceRegistry(SourceLimits(10**8, 10**9))
    sources.register("tile", TileOpener(data, 1 << 24))
    for mode in ("sample", "top_k"):
        runner.run(servable, TileRef("slide.tif"), runner.PredictOptions(seed=1, mode=mode), sources)
    print(*before, *traced())
    """
)


def _traces(model_dir: pathlib.Path, data: pathlib.Path, warm: str) -> tuple[list[int], list[int]]:
    """Times the staged path's functions were traced before and after two tile requests."""
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(model_dir), str(data), warm],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [int(n) for n in done.stdout.split()[-4:]]
    return counts[:2], counts[2:]


def test_a_first_tile_reference_traces_nothing_after_warm_up(tiny_model_dir, tmp_path) -> None:
    before, after = _traces(tiny_model_dir, tmp_path, "warm")
    assert before == after, "the staged path traced on its first request"
    # without warm-up the same requests do trace: the check can fail
    before, after = _traces(tiny_model_dir, tmp_path, "cold")
    assert before != after
