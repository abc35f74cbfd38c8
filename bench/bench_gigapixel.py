"""Gigapixel benchmark: two-level attention sampling on slides referenced by tile.

Fresh Gigapixel-digits canvases (``model_ops.datasets.gigapixel_digits``: the
Megapixel-digits objects on 10k to 100k canvases, strokes growing with the
side) are written tile by tile as pyramidal BigTIFF with JPEG tiles of 256 px
and referenced by path through real server processes on loopback:

- accuracy of the two-level model (``models/gigapixel-digits``, default K and
  N, top-k and sampled) against the one-level approach of the tile benchmark
  on the same slides: the shipped Megapixel-digits networks with a fixed
  512x512 view (a view at the shipped scale of a 100k slide is 12000x12000);
- p50 latency, cold bytes read as a share of the file (the first request, in
  a fresh server, that opens the file), the server's peak memory (VmHWM);
- a sliding-window baseline as slide tools run it: every tile of level 0
  decoded and every 50x50 window of it through the feature network, timed on
  a sample of tiles and scaled to the slide.

    python bench/bench_gigapixel.py        # writes bench/results/gigapixel.md

Canvases are written under runs/bench_gigapixel/ (git-ignored) and deleted
at the end unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import pathlib
import platform
import shutil
import statistics
import sys
import time

from bench_tiles import COUNTERS, Served
from common import ROOT

sys.path.insert(0, str(ROOT))

TWO_LEVEL = "gigapixel-digits"
ONE_LEVEL = "one-level-fixed-view"
ONE_LEVEL_WEIGHTS = ROOT / "models" / "megapixel-digits" / "weights" / "2"
FIXED_VIEW = 512
ONE_LEVEL_PATCHES = 10
TILE = 256
SLIDE_SEED = 2000  # the test split; model_ops.training.gigapixel_eval draws from seed 1000


# -- inputs --------------------------------------------------------------------
def write_slide(size: int, index: int, path: pathlib.Path) -> tuple[int, float]:
    """Write canvas ``index`` of side ``size``; returns (label, seconds)."""
    from model_ops.datasets.gigapixel_digits import gigapixel_spec
    from model_ops.datasets.megapixel_digits import make_layout
    from model_ops.datasets.writers import write_tiff

    layout = make_layout(gigapixel_spec(size), "test", seed=SLIDE_SEED, index=index)
    start = time.perf_counter()
    write_tiff(layout, path, tile=TILE, compression="jpeg")
    return layout.label, time.perf_counter() - start


def export_one_level(repository: pathlib.Path) -> None:
    """The shipped Megapixel-digits networks behind a fixed 512x512 view."""
    import keras

    from model_ops.export import ModelMetadata, export_model
    from model_ops.layers import SampleSoftmax
    from model_ops.training import networks
    from model_ops.training.recipe import MAX_PATCHES, SMOOTH

    attention_logits = networks.build_attention_net((FIXED_VIEW, FIXED_VIEW))
    features, head = networks.build_feature_net(), networks.build_head()
    for net, name in ((attention_logits, "attention"), (features, "features"), (head, "head")):
        net.load_weights(ONE_LEVEL_WEIGHTS / f"{name}.weights.h5")
    x_low = keras.Input((FIXED_VIEW, FIXED_VIEW, 1))
    attention = keras.Model(
        x_low, SampleSoftmax(squeeze_channels=True, smooth=SMOOTH)(attention_logits(x_low))
    )
    metadata = ModelMetadata(
        name=ONE_LEVEL,
        classes=[str(c) for c in range(networks.N_CLASSES)],
        low_scale=0.12,
        low_size=[FIXED_VIEW, FIXED_VIEW],
        patch_size=list(networks.PATCH_SIZE),
        n_patches=ONE_LEVEL_PATCHES,
        max_patches=MAX_PATCHES,
        replace=False,
        receptive_field=0,
        channels=1,
        feature_dim=networks.FEATURE_DIM,
    )
    export_model(attention, features, head, metadata, repository / ONE_LEVEL / "1")


def repositories(work: pathlib.Path, version: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, str]:
    """(two-level, one-level) repositories of one model each, so each server's memory is its
    model's, and which version of the two-level model was copied (it may be retrained meanwhile)."""
    two, one = work / "repo_two_level", work / "repo_one_level"
    shutil.rmtree(two, ignore_errors=True)
    shutil.copytree(version, two / TWO_LEVEL / "1")
    digest = hashlib.sha256()
    for part in sorted((version / "variables").iterdir()):  # the weights identify the version
        digest.update(part.read_bytes())
    name = version.relative_to(ROOT) if version.is_relative_to(ROOT) else version.name  # no machine paths
    copied = f"`{name}` (weights sha256 {digest.hexdigest()[:12]}...)"
    if not (one / ONE_LEVEL / "1").is_dir():
        export_one_level(one)
    return two, one, copied


# -- measurements --------------------------------------------------------------
def by_reference(served: Served, path: pathlib.Path, requests: int) -> dict[str, float]:
    """Cold request (opens the file), then ``requests`` more with new seeds."""
    before = served.counters()
    start = time.perf_counter()
    served.client.predict_tile(path.name, model=TWO_LEVEL, seed=0)
    cold = time.perf_counter() - start
    after = served.counters()
    latencies = []
    for seed in range(1, requests + 1):
        start = time.perf_counter()
        served.client.predict_tile(path.name, model=TWO_LEVEL, seed=seed)
        latencies.append(time.perf_counter() - start)
    size = path.stat().st_size
    cold_bytes = after[COUNTERS[0]] - before[COUNTERS[0]]
    return {
        "cold_s": cold,
        "p50_s": statistics.median(latencies),
        "cold_bytes": cold_bytes,
        "cold_share": cold_bytes / size,
        "tiles_cold": after[COUNTERS[1]] - before[COUNTERS[1]],
        "file_mb": size / 1e6,
    }


def correct_on_exact_views(size: int, count: int, model: pathlib.Path) -> dict[str, int]:
    """How many of the same slides the two-level model labels right, top-k and sampled
    (seeded by the slide's index, as served), from exact, lossless views rendered from
    their layouts (``model_ops.two_level_pipeline``, no file): the model's own accuracy,
    apart from what the JPEG tiles change."""
    import numpy as np

    from model_ops.datasets.gigapixel_digits import LayoutImage, gigapixel_spec
    from model_ops.datasets.megapixel_digits import make_layout
    from model_ops.export import load_model
    from model_ops.two_level_pipeline import SavedModelStages, run_two_level

    saved_model, metadata = load_model(model)
    stages = SavedModelStages(saved_model)
    hits = {"top_k": 0, "sample": 0}
    for index in range(count):
        layout = make_layout(gigapixel_spec(size), "test", seed=SLIDE_SEED, index=index)
        for mode in hits:
            result = run_two_level(stages, LayoutImage(layout), metadata, mode=mode, seed=index)
            hits[mode] += int(np.argmax(result.probabilities.numpy()[0])) == layout.label
    return hits


def opening_bytes(path: pathlib.Path) -> int:
    """Bytes the server's reader takes to open the file (its structure: IFDs and tags;
    a tile's index entries are read with the tile), measured in this process with the same reader."""
    from service.pipeline.payload import TileRef
    from service.pipeline.sources import SourceLimits
    from service.tiles import TileOpener

    source = TileOpener(str(path.parent), 1 << 20)(TileRef(path.name), 1, SourceLimits(10**12, 10**12))
    return source.read_stats.bytes_read


def correct(served: Served, model: str, slides: list[tuple[pathlib.Path, int]], mode: str) -> int:
    """How many slides ``model`` labels right (sampling seeded by the slide's index)."""
    hits = 0
    for index, (path, label) in enumerate(slides):
        response = served.client.predict_tile(
            path.name, model=model, seed=index, mode=mode, attention_map=False
        )
        hits += response.class_index == label
    return hits


def sliding_window(path: pathlib.Path, model: pathlib.Path, sample: int) -> dict[str, float]:
    """Seconds to decode every level-0 tile and run every 50x50 window through the
    feature network, from ``sample`` random tiles (decode) and their windows (features)."""
    import numpy as np
    import tensorflow as tf

    from model_ops.export import load_model
    from service.pipeline.payload import TileRef
    from service.pipeline.sources import SourceLimits
    from service.tiles import TileOpener

    saved_model, metadata = load_model(model)
    features = saved_model.signatures["features"]
    ph, pw = metadata.patch_size
    # opening parses the file's structure, outside the timing; each sampled tile is decoded once
    opener = TileOpener(str(path.parent), 64 << 20)
    source = opener(TileRef(path.name, level=0), 1, SourceLimits(10**12, 10**12))
    height, width, _ = source.shape
    rows, cols = math.ceil(height / TILE), math.ceil(width / TILE)
    rng = np.random.default_rng(0)
    picks = rng.choice(rows * cols, size=min(sample, rows * cols), replace=False)
    offsets = tf.constant([[[p // cols * TILE, p % cols * TILE] for p in picks]], tf.int32)
    start = time.perf_counter()
    tiles = source.patches(offsets, (TILE, TILE))[0]
    decode_s = (time.perf_counter() - start) / len(picks)
    per_tile = (TILE // ph) * (TILE // pw)
    windows = tf.reshape(
        tf.transpose(
            tf.reshape(
                tiles[:, : TILE // ph * ph, : TILE // pw * pw], [-1, TILE // ph, ph, TILE // pw, pw, 1]
            ),
            [0, 1, 3, 2, 4, 5],
        ),
        [-1, ph, pw, 1],
    )
    features(patches=windows[:256])  # warm-up
    start = time.perf_counter()
    for batch in range(0, len(windows), 256):
        features(patches=windows[batch : batch + 256])
    window_s = (time.perf_counter() - start) / (len(picks) * per_tile)
    n_windows = math.ceil(height / ph) * math.ceil(width / pw)
    return {
        "tiles": rows * cols,
        "windows": n_windows,
        "decode_ms": decode_s * 1e3,
        "window_us": window_s * 1e6,
        "total_s": rows * cols * decode_s + n_windows * window_s,
        "sample": len(picks),
    }


# -- report --------------------------------------------------------------------
def versions() -> str:
    import grpc
    import tensorflow as tf
    import tifffile

    return (
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, tifffile {tifffile.__version__}, "
        f"grpcio {grpc.__version__}"
    )


def share(hits: int, total: int) -> str:
    """``hits`` of ``total`` as a percentage with the count, e.g. ``95% (19/20)``."""
    return f"{hits / total * 100:.0f}% ({hits}/{total})"


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion ``hits / total``."""
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def report(args: argparse.Namespace, rows: dict[int, dict]) -> str:
    lines = [
        "# Gigapixel: two-level attention sampling on slides by reference",
        "",
        f"Regenerate: `python bench/bench_gigapixel.py` ({time.strftime('%Y-%m-%d')}).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
        f"{versions()}. Load average at start {args.load:.1f} (the CPUs are shared with other work: "
        "latencies are upper bounds).",
        "",
        f"Two-level model: {args.model}, its default K regions and N patches per region. One-level "
        f"baseline: the shipped Megapixel-digits networks (`models/megapixel-digits/weights/2`) behind a "
        f"fixed {FIXED_VIEW}x{FIXED_VIEW} view, {ONE_LEVEL_PATCHES} patches of 50x50, top-k (the tile "
        "benchmark's fixed-view setup with trained weights). Slides: fresh Gigapixel-digits test canvases "
        f"(seed {SLIDE_SEED}) written tile by tile as pyramidal BigTIFF, JPEG tiles of {TILE} px, levels "
        "halving down to one tile, each referenced by path (`tile`) through a server process on loopback, "
        "one fresh server per size and model. Exact views: the same model, slides and seeds through "
        "`model_ops.two_level_pipeline.run_two_level` on views rendered from the slides' layouts, "
        "losslessly: the gap to the served column is what the JPEG tiles change "
        "(a digit on the coarse view is a mark of a few grey levels, which JPEG blurs or removes).",
        "",
        f"Latency: p50 of {args.requests} requests (seeds 1..{args.requests}, sampled, attention maps "
        "returned) after a first, cold request (seed 0) that opens the file. Cold bytes: the server's "
        "`ats_tile_bytes_read_total` increment over that first request (file structure, the coarse level, "
        "K region views, K x N patches) over the file's size; the structure part is what the same reader "
        "reads to open the file (for a TIFF, its IFDs and tags; each tile's two index entries are read "
        "with the tile). "
        "Peak memory: the server's VmHWM (peak "
        "resident set, TensorFlow included) after every request of that size. Sliding window: every level-0 "
        f"tile decoded by the server's reader and every 50x50 window through the model's feature network "
        f"(batches of 256), per-tile and per-window times measured on {args.window_sample} random tiles "
        "and scaled to the slide; no background is skipped (a digits canvas has no glass).",
        "",
        "Coarse view: the server makes it from the coarsest level at least four times its size "
        "(`--view-oversample 4`, the default), averaging the JPEG tiles down; the `nearest level` column "
        "is the same server with `--view-oversample 1` (the level of the view's own size, as before).",
        "",
        "| slide | file | write | slides | two-level top-k | sampled | nearest level top-k / sampled "
        "| exact views top-k / sampled | one-level fixed view "
        "| cold | p50 "
        "| cold bytes | peak memory | sliding window | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for size, r in sorted(rows.items()):
        n = r["slides"]
        lines.append(
            f"| {size}x{size} | {r['file_mb']:.0f} MB | {r['write_s']:.2g} s | {n} "
            f"| {share(r['top_k'], n)} | {share(r['sample'], n)} "
            f"| {share(r['nearest_top_k'], n)} / {share(r['nearest_sample'], n)} "
            f"| {share(r['exact_top_k'], n)} / {share(r['exact_sample'], n)} "
            f"| {share(r['one_level'], n)} "
            f"| {r['cold_s'] * 1e3:.0f} ms | {r['p50_s'] * 1e3:.0f} ms "
            f"| {r['cold_share'] * 100:.3f}% ({r['cold_bytes'] / 1e6:.2f} MB: "
            f"{r['opening_bytes'] / 1e6:.2f} MB structure, {r['tiles_cold']:.0f} tiles) "
            f"| {r['peak_mb']:.0f} MB | {r['window']['total_s']:.0f} s ({r['window']['tiles']} tiles, "
            f"{r['window']['decode_ms']:.1f} ms + {r['window']['windows'] / r['window']['tiles']:.0f} x "
            f"{r['window']['window_us']:.0f} us) | {r['window']['total_s'] / r['p50_s']:.0f}x |"
        )
    lines += ["", "Two-level accuracy with 95% Wilson intervals (as served):", ""]
    for size, r in sorted(rows.items()):
        cells = []
        for mode in ("top_k", "sample"):
            low, high = wilson(r[mode], r["slides"])
            cells.append(f"{mode.replace('_', '-')} {share(r[mode], r['slides'])}, {low:.1%}-{high:.1%}")
        lines.append(f"- {size}x{size}: " + "; ".join(cells))
    lines += [
        "",
        "Targets at 100k x 100k (issue 14): accuracy at least 95%, p50 under 1 s, cold bytes at most 1% of "
        "the file, peak server memory under 1.5 GB, at least 100x less time than the sliding window. "
        "Write: seconds to render and write one slide (the first of its size).",
    ]
    return "\n".join(lines) + "\n"


def run_size(
    args: argparse.Namespace, size: int, work: pathlib.Path, two: pathlib.Path, one: pathlib.Path
) -> dict:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    slides, writes = [], []
    for index in range(args.slides[size]):
        path = data / f"slide_{size}_{index}.tif"
        label, seconds = write_slide(size, index, path)
        slides.append((path, label))
        writes.append(seconds)
    row: dict = {"slides": len(slides), "write_s": writes[0]}
    served = Served(two, data, work / f"server_two_level_{size}.log")
    try:
        row.update(by_reference(served, slides[0][0], args.requests))
        row["top_k"] = correct(served, TWO_LEVEL, slides, "top_k")
        row["sample"] = correct(served, TWO_LEVEL, slides, "sample")
        row["peak_mb"] = served.peak_rss_mb()
    finally:
        served.close()
    served = Served(two, data, work / f"server_nearest_{size}.log", "--view-oversample", "1")
    try:
        row["nearest_top_k"] = correct(served, TWO_LEVEL, slides, "top_k")
        row["nearest_sample"] = correct(served, TWO_LEVEL, slides, "sample")
    finally:
        served.close()
    served = Served(one, data, work / f"server_one_level_{size}.log")
    try:
        row["one_level"] = correct(served, ONE_LEVEL, slides, "top_k")
    finally:
        served.close()
    exact = correct_on_exact_views(size, len(slides), two / TWO_LEVEL / "1")
    row["exact_top_k"], row["exact_sample"] = exact["top_k"], exact["sample"]
    row["opening_bytes"] = opening_bytes(slides[0][0])
    row["window"] = sliding_window(slides[0][0], two / TWO_LEVEL / "1", args.window_sample)
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    print(f"{size}: {row}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--slides", default="100,100,200", help="slides per size, in the order of --sizes")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--window-sample", type=int, default=64, help="tiles timed for the sliding window")
    parser.add_argument(
        "--model", help="two-level version directory (default: the newest of models/gigapixel-digits)"
    )
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_gigapixel"))
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "gigapixel.md"))
    parser.add_argument("--keep", action="store_true", help="keep the slides")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.slides = dict(zip(sizes, (int(n) for n in args.slides.split(",")), strict=True))
    args.load = os.getloadavg()[0]
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from model_ops.export import latest_version

    version = pathlib.Path(args.model) if args.model else latest_version(ROOT / "models" / TWO_LEVEL)
    two, one, args.model = repositories(work, version.resolve())
    rows = {size: run_size(args, size, work, two, one) for size in sizes}
    pathlib.Path(args.output).write_text(report(args, rows))
    print(pathlib.Path(args.output).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
