"""Service benchmark: what gRPC adds on top of the pipeline, and throughput.

For one 1500x1500 PNG (a Megapixel-digits canvas):
- the in-process pipeline time (decode to head, same code as the server);
- gRPC end-to-end p50/p99 from this client process to an ``ats-serve``
  subprocess on loopback, and the overhead over the pipeline (target: < 15% of p50);
- throughput with 1, 4 and 8 concurrent client processes.

Uses the shipped model (models/megapixel-digits) when present, else a tiny
random-weight model exported for the run (the table says which).

    python bench/bench_service.py            # writes bench/results/service.md
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import pathlib
import statistics
import tempfile
import time

import numpy as np
from common import ROOT, ServerProcess
from machine import describe

SHIPPED = "megapixel-digits"
# 8 predictions at once, room for every client of the throughput runs
SERVER_FLAGS = (
    "--max-concurrent-predicts",
    "8",
    "--queue-timeout",
    "60",
    "--drain-delay",
    "0",
)
STAGES = ("decode", "lowres", "attention", "sampling", "extract", "features", "aggregate", "head")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def canvas_png() -> bytes:
    """A reference 1500x1500 Megapixel-digits canvas, PNG-encoded."""
    from PIL import Image

    from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas

    pixels = render_canvas(make_layout(CanvasSpec(), "test", seed=0, index=0))[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def model_repository(workdir: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    """(repository, model name, description) of the model to benchmark."""
    shipped = ROOT / "models" / SHIPPED
    versions = sorted(int(p.name) for p in shipped.glob("*") if p.name.isdigit()) if shipped.is_dir() else []
    if versions:
        return ROOT / "models", SHIPPED, f"shipped `{SHIPPED}` version {versions[-1]}"
    from model_ops.export import export_tiny_model

    export_tiny_model(workdir / "tiny" / "1", name="tiny", channels=1)
    return (
        workdir,
        "tiny",
        (
            "tiny random-weight model (`export_tiny_model`, channels=1, scale 1/8, "
            "4 patches of 8x8): the shipped model is not in models/ yet"
        ),
    )


def load_pipeline(repository: pathlib.Path, name: str):
    """A function running the whole pipeline in this process on encoded bytes
    (model loaded and warmed up like the server does)."""
    from service.models.servable import load_servable
    from service.models.warmup import warm_up
    from service.pipeline import runner
    from service.pipeline.payload import EncodedImage
    from service.pipeline.sources import SourceLimits, SourceRegistry

    version = max(int(p.name) for p in (repository / name).iterdir() if p.name.isdigit())
    servable = load_servable(name, version, repository / name / str(version))
    warm_up(servable)
    sources = SourceRegistry(SourceLimits(max_image_pixels=200_000_000, max_image_bytes=1 << 30))
    return lambda png, seed: runner.run(
        servable, EncodedImage(png), runner.PredictOptions(seed=seed), sources
    )


def paired(
    pipeline, target: str, png: bytes, runs: int
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Alternately one in-process pipeline run and one gRPC request, so both see
    the same machine load: their seconds, and the server's own stage timings."""
    from ats_client import AtsClient

    local, remote, stages = [], [], {s: [] for s in (*STAGES, "total")}
    with AtsClient(target) as client:
        for i in range(runs + 3):
            started = time.perf_counter()
            pipeline(png, i)
            middle = time.perf_counter()
            response = client.predict(png, seed=i)
            done = time.perf_counter()
            if i >= 3:
                local.append(middle - started)
                remote.append(done - middle)
                for timing in response.timings:
                    stages[timing.stage].append(timing.seconds)
    return local, remote, stages


def _client_worker(target: str, png: bytes, duration: float, start_at: float, results) -> None:
    from ats_client import AtsClient

    latencies = []
    with AtsClient(target) as client:
        client.predict(png, seed=0)  # connect before the clock starts
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + duration
        while time.time() < end:
            started = time.perf_counter()
            client.predict(png, seed=len(latencies))
            latencies.append(time.perf_counter() - started)
    results.put(latencies)


def throughput(target: str, png: bytes, clients: int, duration: float) -> tuple[float, list[float]]:
    """Requests per second and latencies with ``clients`` client processes."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 8  # time for every process to import and connect
    workers = [
        context.Process(target=_client_worker, args=(target, png, duration, start_at, results))
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    latencies = [t for _ in workers for t in results.get(timeout=duration + 120)]
    for worker in workers:
        worker.join()
    return len(latencies) / duration, latencies


def versions() -> str:
    import grpc
    import tensorflow as tf

    return describe(TensorFlow=tf.__version__, grpcio=grpc.__version__)


def report(
    args: argparse.Namespace,
    model: str,
    measured: dict[str, tuple[bytes, list, list, dict]],
    loads: dict[int, tuple[float, list[float]]],
) -> str:
    ms = lambda s: f"{s * 1000:.1f}"
    lines = [
        "# Service benchmark",
        "",
        f"Generated by `python bench/bench_service.py` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"- Machine: {versions()}. The machine is shared: other jobs may run at the same time.",
        f"- Model: {model}.",
        "- Images: 1500x1500 grayscale PNGs, sent as encoded bytes in one unary Predict: a "
        "Megapixel-digits canvas (mostly black, so a small file) and, as a worst case for transfer "
        "and decoding, uniform noise.",
        f"- {args.runs} requests per image after 3 warm-up ones, each paired with one in-process "
        "pipeline run just before it (same load on the machine for both); server in an `ats-serve` "
        "subprocess, client in the benchmark process, on loopback.",
        "",
        "## Pipeline against gRPC end to end",
        "",
        "| image | PNG size | in-process pipeline p50 / p99 (ms) | server-reported pipeline p50 (ms) "
        "| gRPC end to end p50 / p99 (ms) | overhead at p50 | overhead / end-to-end p50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, (png, local, remote, stages) in measured.items():
        overhead = statistics.median(r - loc for r, loc in zip(remote, local, strict=True))
        lines.append(
            f"| {label} | {len(png) / 1e6:.2f} MB "
            f"| {ms(statistics.median(local))} / {ms(percentile(local, 99))} "
            f"| {ms(statistics.median(stages['total']))} "
            f"| {ms(statistics.median(remote))} / {ms(percentile(remote, 99))} "
            f"| {ms(overhead)} ms | **{100 * overhead / statistics.median(remote):.1f}%** |"
        )
    lines += [
        "",
        "Target: overhead under 15% of the end-to-end p50. Overhead = median over the pairs of "
        "(end-to-end time minus in-process pipeline time): serialisation, the loopback transfer, gRPC "
        "and the servicer. Pairing keeps the other jobs on the machine from landing on one side only; "
        "from run to run on this shared machine the overhead still moves by a few ms.",
        "",
    ]
    for label, (_, _, _, stages) in measured.items():
        lines.append(
            f"Server-side stage medians for the {label} (ms): "
            + ", ".join(f"{s} {ms(statistics.median(stages[s]))}" for s in STAGES)
            + "."
        )
    lines += [
        "",
        "## Throughput",
        "",
        f"Each client is its own process sending the canvas back to back for {args.duration:g} s; the "
        "server allows 8 predictions at once.",
        "",
        "| concurrent clients | requests | throughput (req/s) | ratio to 1 client | p50 (ms) | p99 (ms) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = loads[min(loads)][0]
    for clients, (rate, latencies) in sorted(loads.items()):
        lines.append(
            f"| {clients} | {len(latencies)} | {rate:.1f} | {rate / base:.2f} | "
            f"{ms(statistics.median(latencies))} | {ms(percentile(latencies, 99))} |"
        )
    lines += [
        "",
        f"On {os.cpu_count()} cores, throughput saturates once they are busy; more clients then "
        "queue (latency grows), no request fails.",
    ]
    return "\n".join(lines) + "\n"


def noise_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 1500), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="requests measured per image")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per throughput level")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "service.md"))
    args = parser.parse_args()
    images = {"canvas": canvas_png(), "noise image": noise_png()}
    with tempfile.TemporaryDirectory() as workdir:
        repository, name, model = model_repository(pathlib.Path(workdir))
        pipeline = load_pipeline(repository, name)
        server = ServerProcess(repository, pathlib.Path(workdir) / "server.log", *SERVER_FLAGS)
        try:
            server.wait_serving()
            target = server.target
            measured = {
                label: (png, *paired(pipeline, target, png, args.runs)) for label, png in images.items()
            }
            loads = {c: throughput(target, images["canvas"], c, args.duration) for c in (1, 4, 8)}
        finally:
            server.terminate()
    text = report(args, model, measured, loads)
    pathlib.Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
