"""Benchmark of the decode stage, Pillow against imagecodecs; writes bench/results/decode.md.

    python bench/bench_decode.py [--repeats N] [--canvases N]

Images: a 1500x1500 Megapixel-digits canvas (grey, what the shipped model
reads) and a 4000x4000 RGB photograph-like picture, each as PNG, JPEG
(quality 90), TIFF (deflate, LZW, none) and WebP (lossless and quality 90).
For each: ``decode_image`` as today with Pillow alone, and as it is now
(imagecodecs for the layouts of service/pipeline/codecs.py), to the
channels of the model, timed interleaved (median); the outputs compared;
and how far each releases the GIL (two threads decoding at once against
one). Then JPEG DCT scaling for the low-resolution view, and the shipped
model's predictions on held-out canvases with each decoder.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import io
import os
import pathlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import imagecodecs
import numpy as np
import PIL
import PIL.features
from machine import describe
from PIL import Image

from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from model_ops.lowres import low_resolution_size, low_resolution_view
from service.pipeline import codecs, decode, png
from service.pipeline.payload import EncodedImage
from service.pipeline.sources import ImageSource, InMemorySource, SourceLimits, SourceRegistry

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "decode.md"
SHIPPED = "megapixel-digits"
LIMIT = 1 << 30
# (label, Pillow format, save options)
ENCODINGS = (
    ("PNG", "PNG", {}),
    ("JPEG q90", "JPEG", {"quality": 90}),
    ("TIFF deflate", "TIFF", {"compression": "tiff_adobe_deflate"}),
    ("TIFF LZW", "TIFF", {"compression": "tiff_lzw"}),
    ("TIFF none", "TIFF", {}),
    ("WebP lossless", "WEBP", {"lossless": True}),
    ("WebP q90", "WEBP", {"quality": 90}),
)


def encode(pixels: np.ndarray, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def canvas(index: int = 0) -> np.ndarray:
    """A held-out (test split) Megapixel-digits canvas, (1500, 1500) grey."""
    return render_canvas(make_layout(CanvasSpec(), "test", seed=0, index=index))[..., 0]


def photo(side: int = 4000) -> np.ndarray:
    """Smooth colour gradients with fine noise: compresses like a photograph, not like noise."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    noise = np.random.default_rng(0).normal(0, 6, (side, side, 3)).astype(np.float32)
    base = np.stack([255 * y, 255 * x, 128 + 100 * np.sin(12 * (x + y))], axis=-1)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@contextmanager
def pillow_only() -> Iterator[None]:
    """``decode_image`` as before imagecodecs: Pillow decodes every file.
    Process-wide: entered from the main thread only, around whole measurements
    when threads decode."""
    with mock.patch.dict(codecs.DECODERS, clear=True):
        yield


def new_decode(data: bytes, channels: int) -> np.ndarray:
    return decode.decode_image(data, channels, LIMIT, LIMIT)


def pillow_decode(data: bytes, channels: int) -> np.ndarray:
    with pillow_only():
        return new_decode(data, channels)


SOURCES = SourceRegistry(SourceLimits(max_image_pixels=LIMIT, max_image_bytes=LIMIT))


def decode_stage(data: bytes, channels: int) -> object:
    """What the pipeline's decode stage runs: ``decode_image``, then the
    pixels handed to TensorFlow (copied there unless aligned and writable)."""
    return SOURCES.open(EncodedImage(data), channels)


def chosen(data: bytes, channels: int) -> str:
    """Which decoder ``decode_image`` runs on ``data``."""
    with Image.open(io.BytesIO(data)) as image:
        samples = codecs.samples(image, data, channels)
    if samples is None:
        return "Pillow"
    plain_png = png.decode(data, codecs.aligned_empty(samples.shape, samples.dtype)) is not None
    return "libdeflate + op library" if plain_png else "imagecodecs"


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call, calls interleaved round-robin after a warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def thread_scaling(fn: Callable[[], object], calls: int, rounds: int = 3) -> float:
    """Throughput of two threads calling ``fn`` at once over one thread's
    (median of ``rounds``): near 2 on two idle cores when ``fn`` releases
    the GIL, near 1 when it holds it."""
    ratios = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            one = time.perf_counter() - start
            start = time.perf_counter()
            list(pool.map(lambda _: fn(), range(calls)))
            two = time.perf_counter() - start
            ratios.append(one / two)
    return statistics.median(ratios)


def gil_held_ms(fn: Callable[[], object], calls: int) -> float:
    """Median over ``calls`` of the longest stretch (ms) in which a probe
    thread, yielding the GIL at every step, could not take it back while
    ``fn`` ran: about the whole call when ``fn`` holds the GIL (what the
    server's event loop would wait), near zero when it releases it. Other
    load on the machine adds its scheduling delays to the floor."""
    stop, stamps = threading.Event(), []

    def probe() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0)

    thread = threading.Thread(target=probe)
    thread.start()
    longest = []
    try:
        for _ in range(calls):
            time.sleep(0.005)
            start = time.perf_counter()
            fn()
            end = time.perf_counter()
            inside = [start] + [t for t in stamps if start < t < end] + [end]
            longest.append(max(np.diff(inside)))
            stamps.clear()
    finally:
        stop.set()
        thread.join()
    return statistics.median(longest) * 1e3


def python_loop() -> int:
    """Pure Python work, which holds the GIL: the scaling a decoder that holds it would show."""
    return sum(i * i for i in range(300_000))


@dataclasses.dataclass
class Row:
    image: str
    encoding: str
    size_kb: float
    decoder: str
    pillow_ms: float
    new_ms: float
    max_difference: int
    pillow_scaling: float
    new_scaling: float
    pillow_held_ms: float
    new_held_ms: float


def measure_one(image: str, label: str, data: bytes, channels: int, repeats: int, calls: int) -> Row:
    before, after = pillow_decode(data, channels), new_decode(data, channels)
    assert before.shape == after.shape and before.dtype == after.dtype == np.uint8, label
    new = lambda: decode_stage(data, channels)

    def old() -> object:
        with pillow_only():
            return new()

    medians = time_interleaved({"pillow": old, "new": new}, repeats)
    with pillow_only():
        pillow_scaling = thread_scaling(new, calls)
        pillow_held = gil_held_ms(new, calls)
    return Row(
        image=image,
        encoding=label,
        size_kb=len(data) / 1024,
        decoder=chosen(data, channels),
        pillow_ms=medians["pillow"] * 1e3,
        new_ms=medians["new"] * 1e3,
        max_difference=int(np.abs(before.astype(int) - after).max()),
        pillow_scaling=pillow_scaling,
        new_scaling=thread_scaling(new, calls),
        pillow_held_ms=pillow_held,
        new_held_ms=gil_held_ms(new, calls),
    )


def measure(image: str, pixels: np.ndarray, channels: int, repeats: int) -> list[Row]:
    calls = 8 if pixels.size < 10_000_000 else 4
    rows = []
    for label, image_format, options in ENCODINGS:
        data = encode(pixels, image_format, **options)
        rows.append(measure_one(image, label, data, channels, repeats, calls))
        print(rows[-1], flush=True)
    return rows


def decoder_table(rows: list[Row]) -> list[str]:
    lines = [
        "| image | encoding | KiB | decoder now | Pillow ms | now ms | Pillow / now | max pixel difference "
        "| 2 threads / 1, Pillow | 2 threads / 1, now | GIL held ms, Pillow | GIL held ms, now |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.image} | {r.encoding} | {r.size_kb:.0f} | {r.decoder} | {r.pillow_ms:.2f} | "
            f"{r.new_ms:.2f} | {r.pillow_ms / r.new_ms:.2f} | {r.max_difference} | "
            f"{r.pillow_scaling:.2f} | {r.new_scaling:.2f} | {r.pillow_held_ms:.2f} | {r.new_held_ms:.2f} |"
        )
    return lines


def raw_decoders(pixels: np.ndarray, repeats: int) -> list[str]:
    """The codecs alone on the canvas (no header checks, no conversion): the candidates per format."""

    def pillow(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image)

    candidates = {
        "PNG": (
            "PNG",
            {},
            {
                "png_decode (libpng)": imagecodecs.png_decode,
                "spng_decode": imagecodecs.spng_decode,
                "libdeflate + ats_png_unfilter (the server's)": lambda d: png.decode(
                    d, codecs.aligned_empty(pixels.shape, pixels.dtype)
                ),
            },
        ),
        "JPEG q90": (
            "JPEG",
            {"quality": 90},
            {
                "jpeg8_decode (libjpeg-turbo)": imagecodecs.jpeg8_decode,
                "jpeg_decode": imagecodecs.jpeg_decode,
            },
        ),
        "TIFF deflate": (
            "TIFF",
            {"compression": "tiff_adobe_deflate"},
            {"tiff_decode (libtiff)": imagecodecs.tiff_decode},
        ),
        "WebP lossless": ("WEBP", {"lossless": True}, {"webp_decode (libwebp)": imagecodecs.webp_decode}),
    }
    lines = ["| encoding | decoder | median ms | Pillow / it |", "| --- | --- | ---: | ---: |"]
    for label, (image_format, options, fns) in candidates.items():
        data = encode(pixels, image_format, **options)
        medians = time_interleaved(
            {"Pillow open + load": lambda d=data: pillow(d)}
            | {name: lambda fn=fn, d=data: fn(d) for name, fn in fns.items()},
            repeats,
        )
        for name, seconds in medians.items():
            lines.append(
                f"| {label} | {name} | {seconds * 1e3:.2f} | {medians['Pillow open + load'] / seconds:.2f} |"
            )
    return lines


# --- JPEG DCT scaling for the low-resolution view -------------------------------------------


def draft_grey(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The JPEG decoded at the smallest DCT scale (1/2, 1/4, 1/8) still at
    least ``size`` (h, w), as grey (H', W', 1)."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (size[1], size[0]))
        image.load()
        return np.asarray(image)[..., np.newaxis]


@dataclasses.dataclass(frozen=True)
class StagedJpeg:
    """A JPEG run through the staged pipeline (not the fused graph, which
    makes its own low view), its low view made from a DCT-scaled decode when
    ``draft``: a payload kind of this benchmark."""

    data: bytes
    draft: bool
    kind = "staged-jpeg"


class StagedJpegSource(ImageSource):
    """The decoded JPEG's patches; its low view from the full decode, or from a DCT-scaled one."""

    def __init__(self, payload: StagedJpeg, channels: int) -> None:
        self._pixels = InMemorySource(new_decode(payload.data, channels))
        self._payload = payload

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._pixels.shape

    def low_view(self, size):
        if not self._payload.draft:
            return self._pixels.low_view(size)
        return low_resolution_view(draft_grey(self._payload.data, size)[np.newaxis], size)

    def patches(self, offsets, patch_size):
        return self._pixels.patches(offsets, patch_size)


def load_pipeline():
    """(predict(payload, seed) -> probabilities, model description, low scale) for the shipped model."""
    from model_ops.export import latest_version
    from service.models.servable import load_servable
    from service.models.warmup import warm_up
    from service.pipeline import runner

    newest = latest_version(ROOT / "models" / SHIPPED)
    servable = load_servable(SHIPPED, int(newest.name), newest)
    warm_up(servable)
    sources = SourceRegistry(SourceLimits(max_image_pixels=LIMIT, max_image_bytes=LIMIT))
    sources.register("staged-jpeg", lambda payload, channels, limits: StagedJpegSource(payload, channels))

    def predict(payload, seed: int) -> np.ndarray:
        return runner.run(servable, payload, runner.PredictOptions(seed=seed), sources).probabilities

    return predict, f"shipped `{SHIPPED}` version {newest.name}", servable.spec.low_scale


def dct_scaling(repeats: int, scale: float) -> list[str]:
    """Time and pixel difference of the low view made from a DCT-scaled JPEG decode."""
    pixels = canvas(0)
    data = encode(pixels, "JPEG", quality=90)
    size = low_resolution_size(pixels.shape, scale)
    full = new_decode(data, 1)
    current = low_resolution_view(full, size).numpy()
    drafted = draft_grey(data, size)
    dct_view = low_resolution_view(drafted, size).numpy()
    difference = np.abs(current.astype(int) - dct_view)
    medians = time_interleaved(
        {
            "full decode (decode_image)": lambda: new_decode(data, 1),
            "low view from the full decode": lambda: low_resolution_view(full, size),
            "DCT-scaled decode + low view": lambda: low_resolution_view(draft_grey(data, size), size),
        },
        repeats,
    )
    lines = [
        f"Canvas 0 as JPEG q90; the model's low view is {size[1]}x{size[0]} (scale {scale}); libjpeg's "
        f"smallest scale at least that large gives {drafted.shape[1]}x{drafted.shape[0]}, then "
        f"area-resampled to {size[1]}x{size[0]}. Low views differ from today's by at most {difference.max()} "
        f"(mean {difference.mean():.2f}, {np.mean(difference > 0):.0%} of pixels differ).",
        "",
        "| step | median ms |",
        "| --- | ---: |",
        *(f"| {name} | {seconds * 1e3:.2f} |" for name, seconds in medians.items()),
    ]
    return lines


DCT_PAIR = "JPEG q90, staged pipeline: low view from a DCT-scaled decode vs from the full decode"


def predictions(predict, n_canvases: int) -> tuple[list[str], dict[str, int]]:
    """Top-1 agreement and probability differences on held-out canvases, same
    seed per canvas: the table, and the canvases whose class changed per comparison."""
    comparisons: dict[str, list[tuple[bool, float]]] = {
        "PNG: imagecodecs vs Pillow": [],
        "JPEG q90: imagecodecs vs Pillow": [],
        DCT_PAIR: [],
    }
    for index in range(n_canvases):
        pixels = canvas(index)
        png, jpeg = encode(pixels, "PNG"), encode(pixels, "JPEG", quality=90)
        runs = {}
        for name, data in (("png", png), ("jpeg", jpeg)):
            runs[name] = predict(EncodedImage(data), index)
            with pillow_only():
                runs[name + " pillow"] = predict(EncodedImage(data), index)
        runs["staged"] = predict(StagedJpeg(jpeg, draft=False), index)
        runs["draft"] = predict(StagedJpeg(jpeg, draft=True), index)
        pairs = (("png", "png pillow"), ("jpeg", "jpeg pillow"), ("draft", "staged"))
        for (a, b), key in zip(pairs, comparisons, strict=True):
            same = int(np.argmax(runs[a])) == int(np.argmax(runs[b]))
            comparisons[key].append((same, float(np.abs(runs[a] - runs[b]).max())))
    lines = [
        "| comparison | canvases | same top-1 class | max probability difference |",
        "| --- | ---: | ---: | ---: |",
    ]
    changed = {}
    for name, results in comparisons.items():
        agree = sum(same for same, _ in results)
        changed[name] = len(results) - agree
        lines.append(f"| {name} | {len(results)} | {agree} | {max(d for _, d in results):.2e} |")
    return lines, changed


def reading(rows: list[Row], changed: dict[str, int], n_canvases: int) -> list[str]:
    """What the tables decide, from their numbers."""
    ratios = [r.pillow_ms / r.new_ms for r in rows if r.decoder != "Pillow"]
    same_code = [r.pillow_ms / r.new_ms for r in rows if r.decoder == "Pillow"]
    webp = [r for r in rows if r.encoding.startswith("WebP")]
    return [
        f"- Pixels: identical to Pillow's in every row (largest difference "
        f"{max(r.max_difference for r in rows)}), JPEG included: both builds are libjpeg-turbo with the "
        f"same defaults; the shipped model's classes changed on {changed['PNG: imagecodecs vs Pillow']} and "
        f"{changed['JPEG q90: imagecodecs vs Pillow']} of {n_canvases} held-out canvases (PNG, JPEG).",
        f"- Speed where imagecodecs decodes (plain PNGs: libdeflate, then the op library's row filters, "
        f"service/pipeline/png.py): Pillow / now from {min(ratios):.2f} to {max(ratios):.2f} "
        f"(median {statistics.median(ratios):.2f}). Rows where both columns run the same code (decoder "
        f"now: Pillow) show the noise of this machine: {min(same_code):.2f} to {max(same_code):.2f}. "
        "Pillow keeps uncompressed TIFFs (its raw reader is a copy already, and libtiff reads damaged "
        "strips Pillow refuses) and colour JPEGs for a grey model (the same libjpeg-turbo, and Pillow "
        "converts in its own buffer where imagecodecs' samples need a copy first).",
        f"- GIL: Pillow's WebP decoder holds it for the whole decode (WebP rows: median "
        f"{statistics.median(r.pillow_held_ms for r in webp):.1f} ms held with Pillow, "
        f"{statistics.median(r.new_held_ms for r in webp):.1f} ms now); libpng, libjpeg-turbo and libtiff "
        "release it in both builds. The thread columns carry the machine's other work: read them against "
        "the controls in the introduction.",
        f"- DCT scaling: the low view from a 1/8-scale decode changed the class on {changed[DCT_PAIR]} of "
        f"{n_canvases} canvases (it moves the attention map, hence the sampled patches), and the patches "
        "still need the full decode: not used. It would only shorten the critical path if the low view "
        "were made while the full decode runs, and the fused graph makes the low view inside the graph.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--canvases", type=int, default=40, help="held-out canvases for the prediction check")
    args = parser.parse_args()
    decode.take_over_pillow_guards()
    predict, model, scale = load_pipeline()
    grey, colour = canvas(0), photo()
    rows = measure("canvas 1500x1500 grey", grey, 1, args.repeats)
    rows += measure("photo 4000x4000 RGB", colour, 1, max(3, args.repeats // 3))
    rows += measure("photo 4000x4000 RGB", colour, 3, max(3, args.repeats // 3))
    control = thread_scaling(python_loop, 8)
    floor = gil_held_ms(lambda: time.sleep(0.005), 8)
    table, changed = predictions(predict, args.canvases)
    machine = describe(Pillow=PIL.__version__, imagecodecs=imagecodecs.__version__, NumPy=np.__version__)
    lines = [
        "# Decode benchmark",
        "",
        "Regenerate: `python bench/bench_decode.py`. `decode_image` with Pillow decoding every file "
        "(as before) and as it is now (imagecodecs for the layouts in service/pipeline/codecs.py, Pillow "
        "for the rest), to the model's channels (1 for the shipped model; the RGB photo also to 3), "
        "timed as the pipeline's decode stage runs it (`SourceRegistry.open`: `decode_image`, then the "
        "pixels handed to TensorFlow, copied unless aligned and writable), "
        f"median of interleaved calls ({args.repeats} for the canvas, {max(3, args.repeats // 3)} for the "
        'photo). Both include the header checks and the conversion. "2 threads / 1" is the throughput '
        "of two threads decoding at once over one thread's: near 2 on two free cores when the decoder "
        f"releases the GIL, near 1 when it holds it (pure Python work measured the same way: {control:.2f}). "
        '"GIL held ms" is the longest stretch, during one decode (median over the calls), in which a probe '
        "thread that yields the GIL at every step could not take it back: about the whole decode when the "
        "decoder holds the GIL (the time the server's event loop and other requests would wait), near zero "
        f"when it releases it; a 5 ms sleep measured the same way gives {floor:.2f} ms, the floor that the "
        "machine's other load sets.",
        "",
        f"- Machine: {machine}; "
        f"shared with other work while measuring (load average {os.getloadavg()[0]:.1f} at the end): compare "
        "ratios, not absolute times.",
        f"- Libraries: Pillow's libjpeg-turbo {PIL.features.version_feature('libjpeg_turbo')}, zlib "
        f"{PIL.features.version('zlib')}, libtiff {PIL.features.version('libtiff')}, libwebp "
        f"{PIL.features.version('webp')}; imagecodecs' {imagecodecs.version(dict)['libjpeg_turbo']} "
        f"(libjpeg-turbo), libpng {imagecodecs.version(dict)['libpng']}, libtiff "
        f"{imagecodecs.version(dict)['libtiff']}, libwebp {imagecodecs.version(dict)['libwebp']}.",
        f"- Date: {datetime.date.today().isoformat()}.",
        "",
        "## decode_image, before and now",
        "",
        *decoder_table(rows),
        "",
        "## The codecs alone on the canvas",
        "",
        "Open and decode only, no checks or conversion: the candidates for each format.",
        "",
        *raw_decoders(grey, args.repeats),
        "",
        "## JPEG DCT scaling for the low-resolution view",
        "",
        *dct_scaling(args.repeats, scale),
        "",
        "## Predictions on held-out canvases",
        "",
        f"The {model}, in process (the server's pipeline), test-split canvases 0..{args.canvases - 1}, "
        "seed = canvas index for both runs of a pair.",
        "",
        *table,
        "",
        "## Reading",
        "",
        *reading(rows, changed, args.canvases),
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
