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
from service.pipeline import codecs, decode

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


def pillow_decode(data: bytes, channels: int) -> np.ndarray:
    with pillow_only():
        return decode.decode_image(data, channels, LIMIT, LIMIT)


def new_decode(data: bytes, channels: int) -> np.ndarray:
    return decode.decode_image(data, channels, LIMIT, LIMIT)


def chosen(data: bytes, channels: int) -> str:
    """Which decoder ``decode_image`` runs on ``data``."""
    with Image.open(io.BytesIO(data)) as image:
        return "imagecodecs" if codecs.samples(image, data, channels) is not None else "Pillow"


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
    old = lambda: pillow_decode(data, channels)
    new = lambda: new_decode(data, channels)
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
            {"png_decode (libpng)": imagecodecs.png_decode, "spng_decode": imagecodecs.spng_decode},
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
class DraftJpeg:
    """A JPEG whose low view is made from a DCT-scaled decode (a payload kind of this benchmark)."""

    data: bytes
    kind = "draft-jpeg"


def draft_opener():
    """Opens ``DraftJpeg`` payloads: full decode for the patches, DCT-scaled decode for the low view."""
    from service.pipeline.sources import InMemorySource

    class DraftSource(InMemorySource):
        def __init__(self, data: bytes, channels: int) -> None:
            super().__init__(new_decode(data, channels))
            self._data = data

        def low_view(self, size):
            return low_resolution_view(draft_grey(self._data, size)[np.newaxis], size)

    return lambda payload, channels, limits: DraftSource(payload.data, channels)


def load_pipeline():
    """(predict(payload, seed) -> probabilities, model description, low scale) for the shipped model."""
    from service.models.servable import load_servable
    from service.models.warmup import warm_up
    from service.pipeline import runner
    from service.pipeline.sources import SourceLimits, SourceRegistry

    versions = sorted(int(p.name) for p in (ROOT / "models" / SHIPPED).iterdir() if p.name.isdigit())
    servable = load_servable(SHIPPED, versions[-1], ROOT / "models" / SHIPPED / str(versions[-1]))
    warm_up(servable)
    sources = SourceRegistry(SourceLimits(max_image_pixels=LIMIT, max_image_bytes=LIMIT))
    sources.register("draft-jpeg", draft_opener())

    def predict(payload, seed: int) -> np.ndarray:
        return runner.run(servable, payload, runner.PredictOptions(seed=seed), sources).probabilities

    return predict, f"shipped `{SHIPPED}` version {versions[-1]}", servable.spec.low_scale


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


def predictions(predict, n_canvases: int) -> list[str]:
    """Top-1 agreement and probability differences on held-out canvases, same seed per canvas."""
    comparisons: dict[str, list[tuple[bool, float]]] = {
        "PNG: imagecodecs vs Pillow": [],
        "JPEG q90: imagecodecs vs Pillow": [],
        "JPEG q90: low view from a DCT-scaled decode vs today's": [],
    }
    from service.pipeline.payload import EncodedImage

    for index in range(n_canvases):
        pixels = canvas(index)
        png, jpeg = encode(pixels, "PNG"), encode(pixels, "JPEG", quality=90)
        runs = {}
        for name, data in (("png", png), ("jpeg", jpeg)):
            runs[name] = predict(EncodedImage(data), index)
            with pillow_only():
                runs[name + " pillow"] = predict(EncodedImage(data), index)
        runs["draft"] = predict(DraftJpeg(jpeg), index)
        pairs = (("png", "png pillow"), ("jpeg", "jpeg pillow"), ("draft", "jpeg"))
        for (a, b), key in zip(pairs, comparisons, strict=True):
            same = int(np.argmax(runs[a])) == int(np.argmax(runs[b]))
            comparisons[key].append((same, float(np.abs(runs[a] - runs[b]).max())))
    lines = [
        "| comparison | canvases | same top-1 class | max probability difference |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, results in comparisons.items():
        agree = sum(same for same, _ in results)
        lines.append(f"| {name} | {len(results)} | {agree} | {max(d for _, d in results):.2e} |")
    return lines


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
    machine = describe(Pillow=PIL.__version__, imagecodecs=imagecodecs.__version__, NumPy=np.__version__)
    lines = [
        "# Decode benchmark",
        "",
        "Regenerate: `python bench/bench_decode.py`. `decode_image` with Pillow decoding every file "
        "(as before) and as it is now (imagecodecs for the layouts in service/pipeline/codecs.py, Pillow "
        "for the rest), to the model's channels (1 for the shipped model; the RGB photo also to 3), "
        f"median of interleaved calls ({args.repeats} for the canvas, {max(3, args.repeats // 3)} for the "
        'photo). Both include the header checks and the conversion. "2 threads / 1" is the throughput '
        "of two threads decoding at once over one thread's: near 2 on two free cores when the decoder "
        f"releases the GIL, near 1 when it holds it (pure Python work measured the same way: {control:.2f}).",
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
        *predictions(predict, args.canvases),
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
