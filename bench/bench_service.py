"""Service benchmark: what gRPC adds on top of the pipeline, throughput with
and without batching, and CPU per request against its floor.

For 1500x1500 PNGs (Megapixel-digits canvases):
- the in-process pipeline time (decode to head, same code as the server);
- gRPC end-to-end p50/p99 from this client process to an ``ats-serve``
  subprocess on loopback, and the overhead over the pipeline (target: < 15% of p50);
- the in-process path per image (raw tensor in, probabilities out) against the
  model's fused ``predict_image`` signature on the same fresh canvases (target: <= 1.1x);
- throughput, p50 and p99 at 1, 4, 8 and 16 concurrent client processes, side by
  side for the server before the fused path (``BASELINE``, run from a git worktree),
  the fused path without batching and with batching (target at 8 clients: >= 2x
  the baseline; p99 under 3x the single-client p50);
- server CPU per request at saturation against the floor, decode plus the fused
  graph measured in this process (target: within 1.3x);
- the same with ``--precision bfloat16`` (its floor measured in a subprocess, the
  setting being process-wide), and how far its answers are from float32 on
  fresh test canvases (labels, accuracy, probabilities, patches);
- throughput at 8 clients for a few TensorFlow thread settings.

Uses the shipped model (models/megapixel-digits) when present, else a tiny
random-weight model exported for the run (the table says which).

    python bench/bench_service.py            # writes bench/results/service.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import multiprocessing
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

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
# The last commit before issue 13: every request ran the stages as separate calls, alone.
BASELINE = "734dbbc"
VARIANTS = {
    f"before ({BASELINE}, staged)": (),
    "fused, batching off": ("--batch-max-size", "0"),
    "fused, batching on": ("--batch-max-size", "8"),
    "fused, bfloat16, batching off": ("--batch-max-size", "0", "--precision", "bfloat16"),
}
BFLOAT16 = "fused, bfloat16, batching off"
AGREEMENT_SEED = 4242  # test-split canvases of the bfloat16 comparison, apart from the others
THREAD_SETTINGS = ((0, 0), (1, 1), (2, 1), (1, 2), (2, 2))  # (intra-op, inter-op); 0: TensorFlow's default


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def canvas(index: int = 0, split: str = "test") -> np.ndarray:
    """A 1500x1500 Megapixel-digits canvas (H, W) uint8."""
    from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas

    return render_canvas(make_layout(CanvasSpec(), split, seed=0, index=index))[..., 0]


def canvas_png() -> bytes:
    """The reference canvas, PNG-encoded."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(canvas()).save(buffer, format="PNG")
    return buffer.getvalue()


def model_repository(workdir: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    """(repository, model name, description) of the model to benchmark."""
    from model_ops.export import export_tiny_model, version_dirs

    versions = version_dirs(ROOT / "models" / SHIPPED)
    if versions:
        return ROOT / "models", SHIPPED, f"shipped `{SHIPPED}` version {max(versions)}"

    export_tiny_model(workdir / "tiny" / "1", name="tiny", channels=1)
    return (
        workdir,
        "tiny",
        (
            "tiny random-weight model (`export_tiny_model`, channels=1, scale 1/8, "
            "4 patches of 8x8): the shipped model is not in models/ yet"
        ),
    )


def load_servable(repository: pathlib.Path, name: str):
    """The model loaded and warmed up as the server does it, and the server's sources."""
    from model_ops.export import latest_version
    from service.models.servable import load_servable
    from service.models.warmup import warm_up
    from service.pipeline.sources import SourceLimits, SourceRegistry

    newest = latest_version(repository / name)
    servable = load_servable(name, int(newest.name), newest)
    warm_up(servable)
    return servable, SourceRegistry(SourceLimits(max_image_pixels=200_000_000, max_image_bytes=1 << 30))


def load_pipeline(servable, sources):
    """A function running the whole pipeline in this process on encoded bytes."""
    from service.pipeline import runner
    from service.pipeline.payload import EncodedImage

    return lambda png, seed: runner.run(
        servable, EncodedImage(png), runner.PredictOptions(seed=seed), sources
    )


def in_process_paths(servable, sources, count: int) -> tuple[list[float], list[float]]:
    """Seconds per image of the server's in-process path (raw tensor in,
    probabilities out) and of the model's ``predict_image`` signature,
    alternating on ``count`` fresh canvases (each measured after one unmeasured run)."""
    import tensorflow as tf

    from service.pipeline import runner
    from service.pipeline.payload import RawTensor

    signature = servable.saved_model.signatures["predict_image"]
    n_patches = tf.constant(servable.spec.n_patches, tf.int32)
    server, fused = [], []
    for index in range(count):
        pixels = canvas(1000 + index)[..., None]
        payload = RawTensor(shape=pixels.shape, dtype="uint8", data=pixels.tobytes())
        for timings in (None, (server, fused)):
            started = time.perf_counter()
            runner.run(servable, payload, runner.PredictOptions(seed=index), sources)
            middle = time.perf_counter()
            seed = tf.constant(index, tf.int64)
            signature(image=tf.constant(pixels), n_patches=n_patches, seed=seed, mode=tf.constant(0))[
                "probabilities"
            ].numpy()
            done = time.perf_counter()
            if timings is not None:
                server.append(middle - started)
                fused.append(done - middle)
    return server, fused


def floor_cpu(servable, png: bytes, runs: int) -> float:
    """CPU seconds (all threads of this process) per image of decoding the PNG
    and running the fused graph on it: the least a request can cost."""
    from service.pipeline import decode
    from service.pipeline.fused import fused_graph
    from service.pipeline.sources import shared_tensor

    graph = fused_graph(servable)
    low = servable.spec.low_shape(1500, 1500)
    samples = []
    for seed in range(runs + 3):
        started = time.process_time()
        pixels = decode.decode_image(png, 1, 200_000_000, 1 << 30)
        graph.run([shared_tensor(pixels)], low, servable.spec.n_patches, [seed], "sample")
        if seed >= 3:
            samples.append(time.process_time() - started)
    return statistics.median(samples)


def floor_in_subprocess(precision: str, runs: int) -> float:
    """``floor_cpu`` in a fresh process whose graphs run at ``precision``."""
    done = subprocess.run(
        [sys.executable, __file__, "--print-floor", precision, "--runs", str(runs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


@dataclasses.dataclass
class Agreement:
    mode: str
    canvases: int
    same_label: int
    correct_float32: int
    correct_bfloat16: int
    same_patches: int
    differences: list[float]  # per canvas, the largest probability difference


def precision_agreement(servable, sources, target: str, count: int) -> list[Agreement]:
    """Answers of a bfloat16 server against this process's float32 pipeline on
    ``count`` fresh test canvases, same seeds, per sampling mode."""
    from PIL import Image

    from ats_client import AtsClient
    from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
    from service.pipeline import runner
    from service.pipeline.payload import EncodedImage

    results = []
    with AtsClient(target) as client:
        for mode in ("top_k", "sample"):
            agreement = Agreement(mode, count, 0, 0, 0, 0, [])
            for index in range(count):
                layout = make_layout(CanvasSpec(), "test", seed=AGREEMENT_SEED, index=index)
                buffer = io.BytesIO()
                Image.fromarray(render_canvas(layout)[..., 0]).save(buffer, format="PNG")
                png = buffer.getvalue()
                local = runner.run(
                    servable, EncodedImage(png), runner.PredictOptions(seed=index, mode=mode), sources
                )
                served = client.predict(png, seed=index, mode=mode)
                label = int(np.argmax(local.probabilities))
                got = np.array([p.probability for p in served.probabilities])
                agreement.same_label += served.label == str(label)
                agreement.correct_float32 += label == layout.label
                agreement.correct_bfloat16 += served.label == str(layout.label)
                patches = {(p.y, p.x) for p in served.patches}
                agreement.same_patches += patches == {tuple(o) for o in local.offsets.tolist()}
                agreement.differences.append(float(np.abs(got - local.probabilities).max()))
            results.append(agreement)
    return results


def paired(
    pipeline, target: str, png: bytes, runs: int
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Alternately one in-process pipeline run and one gRPC request, so both see
    the same machine load: their seconds, and the server's own stage timings."""
    from ats_client import AtsClient

    local, remote, stages = [], [], {s: [] for s in (*STAGES, "queue", "total")}
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


def process_cpu(pid: int) -> float:
    """CPU seconds a process has used (user and system, all its threads)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


@dataclasses.dataclass
class Load:
    rate: float
    latencies: list[float]
    cpu_per_request: float


@contextlib.contextmanager
def baseline_checkout(workdir: pathlib.Path) -> Iterator[pathlib.Path]:
    """A directory whose ``service`` package is the ``BASELINE`` commit's (the
    library, the client and the model come from this checkout)."""
    tree = workdir / "baseline-tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), BASELINE], check=True)
    try:
        shim = workdir / "baseline"
        shim.mkdir()
        (shim / "service").symlink_to(tree / "service")
        yield shim
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


def side_by_side(
    repository: pathlib.Path,
    workdir: pathlib.Path,
    png: bytes,
    levels: tuple[int, ...],
    duration: float,
    flags: tuple[str, ...],
    model: str,
) -> dict[str, dict[int, Load]]:
    """Every variant at every level, the variants interleaved level by level so
    that the machine's other jobs spread over all of them."""
    results: dict[str, dict[int, Load]] = {name: {} for name in VARIANTS}
    with baseline_checkout(workdir) as baseline:
        servers = {
            name: ServerProcess(
                repository,
                workdir / f"server-{i}.log",
                *flags,
                *variant,
                cwd=baseline if i == 0 else ROOT,
            )
            for i, (name, variant) in enumerate(VARIANTS.items())
        }
        try:
            for server in servers.values():
                server.wait_serving((model,))
            for clients in levels:
                for name, server in servers.items():
                    results[name][clients] = measured_load(server, png, clients, duration)
        finally:
            for server in servers.values():
                server.terminate()
    return results


def measured_load(server: ServerProcess, png: bytes, clients: int, duration: float) -> Load:
    before = process_cpu(server.process.pid)
    rate, latencies = throughput(server.target, png, clients, duration)
    cpu = process_cpu(server.process.pid) - before
    # the clients' connection and warm-up requests run before the clock, outside the count
    return Load(rate, latencies, cpu / (len(latencies) + clients))


def thread_sweep(
    repository: pathlib.Path,
    workdir: pathlib.Path,
    png: bytes,
    duration: float,
    flags: tuple[str, ...],
    model: str,
) -> dict:
    """Throughput at 8 clients with batching on, per TensorFlow thread setting."""
    results = {}
    for intra, inter in THREAD_SETTINGS:
        server = ServerProcess(
            repository,
            workdir / f"threads-{intra}-{inter}.log",
            *flags,
            "--intra-op-threads",
            str(intra),
            "--inter-op-threads",
            str(inter),
        )
        try:
            server.wait_serving((model,))
            results[(intra, inter)] = measured_load(server, png, 8, duration)
        finally:
            server.terminate()
    return results


def versions() -> str:
    import grpc
    import tensorflow as tf

    return describe(TensorFlow=tf.__version__, grpcio=grpc.__version__)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report(
    args: argparse.Namespace,
    model: str,
    measured: dict[str, tuple[bytes, list, list, dict]],
    paths: tuple[list[float], list[float]],
    loads: dict[str, dict[int, Load]],
    floors: dict[str, float],
    threads: dict[tuple[int, int], Load],
    agreement: list[Agreement],
) -> str:
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
            f"Server-side stage medians for the {label} (ms, from inside the fused graph after decode): "
            + ", ".join(f"{s} {ms(statistics.median(stages[s]))}" for s in STAGES if stages[s])
            + "."
        )
    server, fused = paths
    lines += [
        "",
        "## In-process path against the fused signature",
        "",
        f"{len(server)} fresh test-split canvases (not the reference one), each run once unmeasured, "
        "then the server's path (`runner.run` on a raw tensor, probabilities out) and the model's "
        "`predict_image` signature alternately, both from the canvas in memory: the server's path "
        "from the raw tensor's bytes, the signature from the NumPy array (its time includes making "
        "its input tensor, as the server's includes making the pixels from the bytes).",
        "",
        "| path | p50 (ms) | ratio |",
        "| --- | ---: | ---: |",
        f"| `predict_image` signature | {ms(statistics.median(fused))} | 1.00 |",
        f"| server's in-process path | {ms(statistics.median(server))} "
        f"| **{statistics.median(server) / statistics.median(fused):.2f}** |",
        "",
        "Target: at most 1.1x.",
        "",
        "## Throughput, batching off and on",
        "",
        f"Each client is its own process sending the canvas back to back for {args.duration:g} s; each "
        "server allows 8 predictions at once. The three servers run at the same time and are measured "
        f"in turn at each level. `{BASELINE}` is the commit before the fused path (the stages as "
        "separate calls, each request alone), run from a git worktree of it.",
        "",
        "| server | clients | requests | req/s | ratio to baseline | p50 (ms) | p99 (ms) "
        "| p99 / 1-client p50 | server CPU per request (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    baseline = loads[next(iter(VARIANTS))]
    for name, levels in loads.items():
        single = statistics.median(levels[min(levels)].latencies)
        for clients, load in sorted(levels.items()):
            lines.append(
                f"| {name} | {clients} | {len(load.latencies)} | {load.rate:.1f} "
                f"| {load.rate / baseline[clients].rate:.2f} | {ms(statistics.median(load.latencies))} "
                f"| {ms(percentile(load.latencies, 99))} "
                f"| {percentile(load.latencies, 99) / single:.2f} | {ms(load.cpu_per_request)} |"
            )
    batched, reduced = loads["fused, batching on"], loads[BFLOAT16]
    lines += [
        "",
        "Targets at 8 clients: throughput at least 2x the baseline, p99 under 3x the single-client "
        "p50; single-client p50 no worse than the baseline. The baseline runs its own `service` "
        "package with this checkout's `model_ops` (so its low view already uses `AtsResizeArea`, "
        "which makes it a little faster than it was).",
        "",
        "## CPU per request against the floor",
        "",
        f"Floor: decoding the canvas PNG and running the fused graph on it in one process (TensorFlow's "
        f"default threads), CPU time of all its threads, median of {args.runs}, in two fresh processes "
        f"per precision run alternately (the precision is process-wide), the median of the two: "
        f"**{ms(floors['float32'])} ms** in float32, **{ms(floors['bfloat16'])} ms** in bfloat16.",
        "",
        "| server | clients | server CPU per request (ms) | ratio to its floor |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, levels, floor in (
        ("fused, batching on", batched, floors["float32"]),
        (BFLOAT16, reduced, floors["bfloat16"]),
    ):
        for clients in (8, 16):
            cpu = levels[clients].cpu_per_request
            lines.append(f"| {name} | {clients} | {ms(cpu)} | **{cpu / floor:.2f}x** |")
    lines += [
        "",
        "Target: within 1.3x. The server's share above the floor is gRPC, protobuf, the data plane "
        "and Python.",
        "",
        "## bfloat16 against float32",
        "",
        f"{agreement[0].canvases} fresh test-split canvases (seed {AGREEMENT_SEED}), each sent as a PNG "
        "to an `ats-serve --precision bfloat16` and run through this process's float32 pipeline, "
        "same seed for both. Same patches: the same set of sampled positions. Probability "
        "difference: the largest over the ten classes, per canvas.",
        "",
        "| mode | same label | right, float32 | right, bfloat16 | same patches "
        "| probability difference median / 90th pct / max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in agreement:
        lines.append(
            f"| {row.mode} | {row.same_label}/{row.canvases} | {row.correct_float32} "
            f"| {row.correct_bfloat16} | {row.same_patches}/{row.canvases} "
            f"| {statistics.median(row.differences):.4f} / {percentile(row.differences, 90):.4f} "
            f"/ {max(row.differences):.4f} |"
        )
    lines += [
        "",
        "## TensorFlow threads",
        "",
        "Batching on, 8 clients, one server per setting in turn (0: TensorFlow's default, one thread "
        "per core).",
        "",
        "| intra-op | inter-op | req/s | p50 (ms) | p99 (ms) | CPU per request (ms) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (intra, inter), load in threads.items():
        lines.append(
            f"| {intra} | {inter} | {load.rate:.1f} | {ms(statistics.median(load.latencies))} "
            f"| {ms(percentile(load.latencies, 99))} | {ms(load.cpu_per_request)} |"
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
    parser.add_argument(
        "--canvases", type=int, default=30, help="fresh canvases of the in-process comparison"
    )
    parser.add_argument(
        "--agreement", type=int, default=100, help="fresh canvases of the bfloat16 comparison"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput level")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "service.md"))
    parser.add_argument("--print-floor", metavar="PRECISION", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.print_floor:  # the subprocess of floor_in_subprocess
        from service import precision

        precision.apply(args.print_floor)
        with tempfile.TemporaryDirectory() as tmp:
            servable, _ = load_servable(*model_repository(pathlib.Path(tmp))[:2])
            print(floor_cpu(servable, canvas_png(), args.runs))
        return
    images = {"canvas": canvas_png(), "noise image": noise_png()}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        repository, name, model = model_repository(workdir)
        servable, sources = load_servable(repository, name)
        pipeline = load_pipeline(servable, sources)
        paths = in_process_paths(servable, sources, args.canvases)
        # each precision in fresh processes, alternately, twice: the median of their medians
        rounds = [{p: floor_in_subprocess(p, args.runs) for p in ("float32", "bfloat16")} for _ in range(2)]
        floors = {p: statistics.median(r[p] for r in rounds) for p in ("float32", "bfloat16")}
        flags = (*SERVER_FLAGS, "--default-model", name)  # the shipped repository holds two models
        server = ServerProcess(repository, workdir / "server.log", *flags)
        reduced = ServerProcess(repository, workdir / "bfloat16.log", *flags, "--precision", "bfloat16")
        try:
            server.wait_serving((name,))  # "" is ready once the first of the models is
            measured = {
                label: (png, *paired(pipeline, server.target, png, args.runs))
                for label, png in images.items()
            }
            reduced.wait_serving((name,))
            agreement = precision_agreement(servable, sources, reduced.target, args.agreement)
        finally:
            server.terminate()
            reduced.terminate()
        loads = side_by_side(repository, workdir, images["canvas"], (1, 4, 8, 16), args.duration, flags, name)
        threads = thread_sweep(repository, workdir, images["canvas"], args.duration, flags, name)
    text = report(args, model, measured, paths, loads, floors, threads, agreement)
    pathlib.Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
