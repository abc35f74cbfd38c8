"""Benchmark of the patch op against the alternatives; writes bench/results/extract_patches.md.

    python bench/bench_extract_patches.py [--repeats N]

B=1, a 4096x4096x3 image, 16 patches of 64x64 and of 256x256 (offsets
random, some across the border), uint8 and float32. Every method is first
checked to give the op's exact output, then all are timed interleaved
(round-robin, one call each per round) and the median is reported.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from machine import describe

from model_ops import build_info, extract_patches

# Rows that time a reference cost, not a way of cutting patches.
BASELINES = ("memcpy of the output bytes (NumPy copy)", "empty tf.function (TF call overhead)")
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "extract_patches.md"
IMAGE_SIZE = 4096
N_PATCHES = 16
SCALE = 1 / 255


def numpy_slicing(images: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """Per-patch slicing into a zero-filled output (fill outside the image)."""
    out = np.zeros((1, len(offsets[0]), size, size, images.shape[-1]), images.dtype)
    height, width = images.shape[1:3]
    for k, (y, x) in enumerate(offsets[0]):
        y0, y1, x0, x1 = max(y, 0), min(y + size, height), max(x, 0), min(x + size, width)
        if y0 < y1 and x0 < x1:
            out[0, k, y0 - y : y1 - y, x0 - x : x1 - x] = images[0, y0:y1, x0:x1]
    return out


def clipped_gather(images: tf.Tensor, offsets: tf.Tensor, size: int) -> tf.Tensor:
    """gather_nd at clipped coordinates, then zeros where the patch leaves the image."""
    steps = tf.range(size)
    ys = offsets[0, :, 0:1] + steps  # (N, size)
    xs = offsets[0, :, 1:2] + steps
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    yy = tf.broadcast_to(ys[:, :, None], (N_PATCHES, size, size))
    xx = tf.broadcast_to(xs[:, None, :], (N_PATCHES, size, size))
    inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    coords = tf.stack([tf.clip_by_value(yy, 0, height - 1), tf.clip_by_value(xx, 0, width - 1)], axis=-1)
    patches = tf.gather_nd(images[0], coords)
    return tf.where(inside[..., None], patches, tf.zeros_like(patches))[None]


def glimpse_loop(images: tf.Tensor, offsets: tf.Tensor, size: int) -> tf.Tensor:
    """tf.image.extract_glimpse once per patch (it takes one window per image)."""
    corners = tf.cast(offsets[0], tf.float32)
    glimpses = [
        tf.image.extract_glimpse(
            images, (size, size), corners[k : k + 1], centered=False, normalized=False, noise="zero"
        )
        for k in range(N_PATCHES)
    ]
    return tf.stack(glimpses, axis=1)


def graph(fn: Callable, jit: bool = False) -> Callable:
    return tf.function(fn, jit_compile=jit, autograph=False)


AMORTIZED = 8  # calls per tf.function in the amortized rows
OP_AMORTIZED = f"op, per call of {AMORTIZED} in one tf.function"
XLA_AMORTIZED = f"clipped gather_nd, XLA, per call of {AMORTIZED} in one function"


def amortized(fn: Callable, offsets: np.ndarray, jit: bool = False) -> Callable:
    """One function making AMORTIZED calls on shifted offsets (all outputs returned, so
    none is pruned): its time over AMORTIZED is the per-call cost without entering TF
    once per call, the cost a model pays when the op sits inside its graph."""
    shifted = [tf.constant(offsets + 7 * i) for i in range(AMORTIZED)]
    return graph(lambda: tuple(fn(o) for o in shifted), jit=jit)


def methods(images: np.ndarray, offsets: np.ndarray, size: int) -> dict[str, Callable]:
    """name -> zero-argument callable giving the op's values (CPU TF calls are synchronous)."""
    x, o = tf.constant(images), tf.constant(offsets)
    out_bytes = N_PATCHES * size * size * images.shape[-1] * images.itemsize
    src = np.ones(out_bytes, np.uint8)
    found = {
        "op (AtsExtractPatches)": graph(lambda: extract_patches(x, o, size)),
        "op, eager call (no tf.function)": lambda: extract_patches(x, o, size),
        OP_AMORTIZED: amortized(lambda off: extract_patches(x, off, size), offsets),
        "clipped gather_nd, XLA": graph(lambda: clipped_gather(x, o, size), jit=True),
        XLA_AMORTIZED: amortized(lambda off: clipped_gather(x, off, size), offsets, jit=True),
        "NumPy slicing": lambda: numpy_slicing(images, offsets, size),
        "memcpy of the output bytes (NumPy copy)": src.copy,
        "empty tf.function (TF call overhead)": graph(lambda: tf.identity(o)),
    }
    if images.dtype == np.float32:
        found["extract_glimpse loop"] = graph(lambda: glimpse_loop(x, o, size))
    return found


def conversion_methods(images: np.ndarray, offsets: np.ndarray, size: int) -> dict[str, Callable]:
    """uint8 image -> float32 patches times 1/255."""
    x, o = tf.constant(images), tf.constant(offsets)

    def cast_gather():
        return clipped_gather(tf.cast(x, tf.float32) * SCALE, o, size)

    return {
        "op with output_dtype=float32, scale": graph(
            lambda: extract_patches(x, o, size, output_dtype=tf.float32, scale=SCALE)
        ),
        "cast, then clipped gather_nd (graph)": graph(cast_gather),
        "cast, then clipped gather_nd, XLA (fuses the cast)": graph(cast_gather, jit=True),
        "cast, then op on float32": graph(lambda: extract_patches(tf.cast(x, tf.float32) * SCALE, o, size)),
    }


def check_agree(fns: dict[str, Callable]) -> None:
    """Every method must give the op's result (baseline rows excepted)."""
    reference = np.asarray(next(iter(fns.values()))())
    for name, fn in fns.items():
        if name not in BASELINES:
            result = fn()
            first = result[0] if isinstance(result, (tuple, list)) else result  # amortized rows
            np.testing.assert_allclose(np.asarray(first), reference, rtol=1e-6, err_msg=name)


def time_interleaved(fns: dict[str, Callable], repeats: int) -> dict[str, float]:
    """Median seconds per call, calls interleaved round-robin after a warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        name: float(np.median(t)) / (AMORTIZED if name in (OP_AMORTIZED, XLA_AMORTIZED) else 1)
        for name, t in times.items()
    }


def table(medians: dict[str, float], out_bytes: int) -> list[str]:
    op_time = next(iter(medians.values()))
    rows = ["| method | median ms | output GB/s | time / op time |", "| --- | --- | --- | --- |"]
    for name, seconds in medians.items():
        rows.append(
            f"| {name} | {seconds * 1e3:.3f} | {out_bytes / seconds / 1e9:.2f} | {seconds / op_time:.2f} |"
        )
    return rows


def machine() -> list[str]:
    info = build_info()
    return [
        f"- Machine: {describe()}; shared with other work while measuring (load average "
        f"{os.getloadavg()[0]:.1f} at the end): compare ratios, not absolute times.",
        f"- TensorFlow {tf.__version__}, NumPy {np.__version__}; op library "
        f"{info['op_library_version']} built by {info['compiler']} (CUDA: {info['cuda']}).",
        f"- Date: {datetime.date.today().isoformat()}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    lines = [
        "# extract_patches benchmark",
        "",
        "Regenerate: `python bench/bench_extract_patches.py`. B=1, a 4096x4096x3 image, "
        f"{N_PATCHES} patches at random offsets (some across the border); median of "
        f'{args.repeats} interleaved calls each. "time / op time" above 1 means slower '
        "than the op. The empty tf.function row is the fixed cost of any TF call on "
        "this machine: at these sizes it is a large share of the op's time, so the "
        "kernel alone is roughly the op's time minus that row. The rows \"per call of "
        f'{AMORTIZED} in one function" make {AMORTIZED} calls (on shifted offsets) inside one '
        f"tf.function and divide its time by {AMORTIZED}: the per-call cost inside a model's graph, "
        "without that fixed cost.",
        "",
    ]
    results: dict[tuple[str, int], dict[str, float]] = {}
    for size in (64, 256):
        offsets = rng.integers(-size // 2, IMAGE_SIZE - size // 2, size=(1, N_PATCHES, 2)).astype(np.int32)
        for dtype in (np.uint8, np.float32):
            images = pixels.astype(dtype)
            fns = methods(images, offsets, size)
            check_agree(fns)
            medians = time_interleaved(fns, args.repeats)
            results[(np.dtype(dtype).name, size)] = medians
            out_bytes = N_PATCHES * size * size * 3 * images.itemsize
            lines += [
                f"## {np.dtype(dtype).name}, {N_PATCHES} patches of {size}x{size}",
                "",
                *table(medians, out_bytes),
                "",
            ]
        fns = conversion_methods(pixels, offsets, size)
        check_agree(fns)
        medians = time_interleaved(fns, args.repeats)
        results[("convert", size)] = medians
        lines += [
            f"## uint8 -> float32 (x 1/255), {N_PATCHES} patches of {size}x{size}",
            "",
            *table(medians, N_PATCHES * size * size * 3 * 4),
            "",
        ]
    lines[4:4] = [*machine(), ""]
    lines += ["## Targets", "", *targets(results), ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


def targets(results: dict[tuple[str, int], dict[str, float]]) -> list[str]:
    rows = ["| target | measured | met |", "| --- | --- | --- |"]
    for size in (64, 256):
        r = results[("float32", size)]
        ratio = r["clipped gather_nd, XLA"] / r["op (AtsExtractPatches)"]
        rows.append(
            f"| float32 {size}x{size}: op at least as fast as XLA gather | "
            f"XLA time / op time = {ratio:.2f} | {'yes' if ratio >= 1 else 'no'} |"
        )
        ratio = r[XLA_AMORTIZED] / r[OP_AMORTIZED]
        rows.append(
            f"| float32 {size}x{size}: same, {AMORTIZED} calls per function | "
            f"XLA time / op time = {ratio:.2f} | {'yes' if ratio >= 1 else 'no'} |"
        )
    for size in (64, 256):
        r = results[("convert", size)]
        for baseline in (
            "cast, then clipped gather_nd (graph)",
            "cast, then clipped gather_nd, XLA (fuses the cast)",
        ):
            ratio = r[baseline] / r["op with output_dtype=float32, scale"]
            rows.append(
                f"| uint8->float32 {size}x{size}: op >= 2x faster than {baseline} | "
                f"{ratio:.2f}x | {'yes' if ratio >= 2 else 'no'} |"
            )
    for dtype in ("uint8", "float32"):
        r = results[(dtype, 256)]
        for call in ("op (AtsExtractPatches)", "op, eager call (no tf.function)", OP_AMORTIZED):
            share = r[BASELINES[0]] / r[call]
            rows.append(
                f"| {dtype} 256x256: {call} >= 40% of memcpy bandwidth | {share:.0%} | "
                f"{'yes' if share >= 0.4 else 'no'} |"
            )
    return rows


if __name__ == "__main__":
    main()
