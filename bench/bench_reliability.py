"""Reliability benchmark: a real ``ats-serve`` with the shipped model under
load, stalled uploads, a storm of bad input, maximum-size bursts, a hot
reload, each scenario judged against stated targets.

Scenarios (one fresh server each, server defaults unless said):

1. 16 clients for 60 s sending a 1500x1500 Megapixel-digits canvas (PNG):
   answers by gRPC code, p50/p99 latency, server RSS start/peak/end;
2. the same with 64 stalled ``PredictStream`` uploads held open throughout
   (a header, then nothing; reopened when the server ends one): the load's
   answers and the stalled streams' final statuses;
3. a storm of fuzzed requests (mutated and truncated PNG/JPEG/TIFF/WebP
   uploads, unknown enum values, bad tensors, bad options, malformed
   streams) with one valid request in five: INTERNAL/UNKNOWN answers, failed
   valid requests, open descriptors and RSS before and after 10,000 requests;
4. bursts of 4 and 8 concurrent PNGs of the largest allowed size (a simple
   RGB pattern, so the file is small and the pixels many): peak RSS against
   the server's memory budget (read from its start-up log) plus its idle
   footprint, and RSS 10 s after the burst;
5. a hot reload under 8 clients: a version renamed into a temporary
   repository, then one copied file by file with ``variables/`` last (as
   ``cp -r`` does): failed requests and the versions served;
6. maximum-size PNGs sent with a 50 ms deadline: the server CPU they cost,
   against the CPU of one that completes.

Server RSS is /proc/<pid>/status VmRSS sampled at 10 Hz. Flags the server
may not have yet (upload timeouts, memory budget) are looked up in
``ats-serve --help`` and its effective configuration; the table says what
was there.

    python3 bench/bench_reliability.py            # writes bench/results/reliability.md (~7 min)
    python3 bench/bench_reliability.py --quick    # shortened smoke run; prints, writes only with --output
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
from bench_service import canvas_png, percentile, versions
from common import ROOT, ServerProcess

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc

SHIPPED = "megapixel-digits"
MB = 1 << 20
FAULTS = ("INTERNAL", "UNKNOWN")  # never acceptable: a bug, not an answer
OVERLOAD = "RESOURCE_EXHAUSTED"  # documented under overload: not counted as a failure
RSS_DRIFT_TARGET = 0.05
SETTLE_TARGET = 0.10


@dataclasses.dataclass(frozen=True)
class Durations:
    load_s: float  # scenarios 1 and 2
    storm_requests: int  # scenario 3, after storm_warmup
    storm_warmup: int
    bursts: tuple[int, ...]  # scenario 4: concurrent maximum-size requests
    settle_s: float  # scenario 4: RSS read this long after a burst
    reload_calm_s: float  # scenario 5: load before, between and after the reloads
    late_requests: int  # scenario 6: maximum-size requests sent with a 50 ms deadline


FULL = Durations(60.0, 10_000, 500, (4, 8), 10.0, 5.0, 5)
QUICK = Durations(8.0, 600, 100, (2,), 10.0, 2.0, 2)


# -- the server and what it reports --------------------------------------------
def server_flags() -> set[str]:
    """The flags this ``ats-serve`` knows (features still being added may be absent)."""
    shown = subprocess.run(
        [sys.executable, "-m", "service.server.main", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(re.findall(r"--[a-z][a-z-]+", shown))


def effective_config(server: ServerProcess) -> dict[str, Any]:
    """Settings from the server's start-up log line (every one, defaults included)."""
    marker = "effective configuration: "
    for line in server.log().splitlines():
        if marker in line:
            return json.loads(line.split(marker, 1)[1])
    raise RuntimeError("no effective configuration in the server log")


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """VmRSS of a process at 10 Hz in a thread, between ``with`` entry and exit."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(FileNotFoundError):  # the process ended: keep what was seen
                self.samples.append(rss_mb(self.pid))
            if self._stop.wait(0.1):
                return

    def __enter__(self) -> RssSampler:
        self.samples.append(rss_mb(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.samples.append(rss_mb(self.pid))

    def summary(self) -> str:
        """'start / peak / end MB'."""
        return f"{self.samples[0]:.0f} / {max(self.samples):.0f} / {self.samples[-1]:.0f}"


def channel(target: str) -> grpc.Channel:
    """A channel with its own connection: clients in one process must not share one HTTP/2 connection."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


# -- answers ---------------------------------------------------------------------
class Answers:
    """gRPC codes and latencies of OK answers, from many threads."""

    def __init__(self) -> None:
        self.codes: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.lock = threading.Lock()

    def call(self, send: Callable[[], Any]) -> tuple[str, Any]:
        """Run one request, record its code (and latency when OK); its code and reply (None if none)."""
        started = time.perf_counter()
        reply, code = None, "OK"
        try:
            reply = send()
        except grpc.RpcError as error:
            code = error.code().name
        with self.lock:
            self.codes[code] += 1
            if code == "OK":
                self.latencies.append(time.perf_counter() - started)
        return code, reply

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def failed(self) -> int:
        """Answers that are neither OK nor the documented overload refusal."""
        return sum(n for code, n in self.codes.items() if code not in ("OK", OVERLOAD))

    def faults(self) -> int:
        return sum(self.codes[code] for code in FAULTS)

    def latency_ms(self) -> str:
        if not self.latencies:
            return "-"
        return f"{percentile(self.latencies, 50) * 1e3:.0f} / {percentile(self.latencies, 99) * 1e3:.0f}"


def codes_text(codes: collections.Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in codes.most_common()) or "none"


def run_clients(clients: int, body: Callable[[grpc.Channel, int], None], target: str) -> None:
    """``body(channel, index)`` in ``clients`` threads, each with its own connection."""

    def one(index: int) -> None:
        with channel(target) as ch:
            body(ch, index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def load(target: str, image: bytes, clients: int, until: Callable[[], bool], answers: Answers) -> None:
    """``clients`` clients sending ``image`` back to back until ``until()``."""

    def body(ch: grpc.Channel, index: int) -> None:
        stub = pb_grpc.AttentionSamplingStub(ch)
        seed = index << 20
        while not until():
            seed += 1
            answers.call(lambda s=seed: stub.Predict(pb.PredictRequest(image=image, seed=s), timeout=60))

    run_clients(clients, body, target)


def for_seconds(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


# -- 1 and 2: load, with and without stalled uploads ---------------------------
@dataclasses.dataclass
class LoadResult:
    answers: Answers
    rss: str
    stalled: StalledStreams | None = None


class StalledStreams:
    """``count`` PredictStream uploads that send a header and then nothing, each
    reopened when the server ends it, until ``close()`` cancels those still open."""

    def __init__(self, target: str, count: int, per_connection: int = 16) -> None:
        self.channels = [channel(target) for _ in range(math.ceil(count / per_connection))]
        self.finals: collections.Counter[str] = collections.Counter()  # final status of each stream
        # seconds from opening to the server's answer, by status
        self.lifetimes: dict[str, list[float]] = collections.defaultdict(list)
        self.opened = 0
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._open: set[grpc.Future] = set()
        for index in range(count):
            self._start(self.channels[index // per_connection])

    def _start(self, ch: grpc.Channel) -> None:
        ended = threading.Event()

        def requests() -> Iterator[pb.PredictStreamRequest]:
            yield pb.PredictStreamRequest(header=pb.PredictRequest(n_patches=3))
            ended.wait()  # the stall; the request stream ends once the call is over

        started = time.monotonic()
        call = pb_grpc.AttentionSamplingStub(ch).PredictStream.future(requests(), timeout=3600)

        def done(future: grpc.Future) -> None:
            ended.set()
            code = future.code().name
            with self._lock:
                self._open.discard(future)
                closing = self._closing.is_set()
                self.finals[f"{code} (cancelled by the bench at the end)" if closing else code] += 1
                if not closing:
                    self.lifetimes[code].append(time.monotonic() - started)
            if not closing:
                self._start(ch)

        with self._lock:
            self.opened += 1
            self._open.add(call)
        call.add_done_callback(done)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            still_open = list(self._open)
        for call in still_open:
            call.cancel()
        for ch in self.channels:
            ch.close()


def load_scenario(server: ServerProcess, png: bytes, seconds: float, stalled: int = 0) -> LoadResult:
    answers = Answers()
    streams = StalledStreams(server.target, stalled) if stalled else None
    try:
        with RssSampler(server.process.pid) as rss:
            load(server.target, png, 16, for_seconds(seconds), answers)
    finally:
        if streams is not None:
            streams.close()
    return LoadResult(answers, rss.summary(), streams)


# -- 3: bad-input storm ------------------------------------------------------------
def base_images() -> dict[str, bytes]:
    """The canvas in each upload format (the storm's valid requests and mutation seeds)."""
    from PIL import Image

    pixels = Image.open(io.BytesIO(canvas_png()))
    encoded = {}
    for name, options in {
        "PNG": {},
        "JPEG": {"quality": 90},
        "TIFF": {"compression": "tiff_deflate"},
        "WEBP": {"lossless": True},
    }.items():
        buffer = io.BytesIO()
        pixels.save(buffer, format=name, **options)
        encoded[name] = buffer.getvalue()
    return encoded


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One damaged copy of ``data`` and the kind of damage; half land in the
    first 512 bytes, where the headers that size the decoding are."""
    blob = bytearray(data)
    span = min(len(blob), 512) if rng.random() < 0.5 else len(blob)
    kind = str(rng.choice(["flip", "truncate", "zero", "insert", "header only", "append"]))
    if kind == "flip":
        for position in rng.integers(0, span, rng.integers(1, 33)):
            blob[position] = int(rng.integers(0, 256))
    elif kind == "truncate":
        del blob[int(rng.integers(0, len(blob))) :]
    elif kind == "zero":
        start = int(rng.integers(0, span))
        end = min(len(blob), start + int(rng.integers(1, 65)))
        blob[start:end] = bytes(end - start)
    elif kind == "insert":
        at = int(rng.integers(0, span))
        blob[at:at] = rng.integers(0, 256, int(rng.integers(1, 257)), dtype=np.uint8).tobytes()
    elif kind == "header only":
        del blob[int(rng.integers(1, 65)) :]
    else:
        blob += rng.integers(0, 256, int(rng.integers(1, 4097)), dtype=np.uint8).tobytes()
    return kind, bytes(blob)


Request = tuple[str, bool, pb.PredictRequest | list[pb.PredictStreamRequest]]


def bad_tensor(rng: np.random.Generator) -> pb.Tensor:
    shape = [
        [1500],
        [0, 0, 1],
        [2, 2, 2, 2],
        [-1500, 1500, 1],
        [1 << 40, 1 << 40, 1],
        [64, 64, 7],
        [64, 64, 1],
    ][int(rng.integers(0, 7))]
    dtype = int(rng.choice([0, 1, 2, 42, -3]))
    data = rng.integers(0, 256, int(rng.integers(0, 64 * 64 * 2)), dtype=np.uint8).tobytes()
    return pb.Tensor(shape=shape, dtype=dtype, data=data)


def storm_request(index: int, images: dict[str, bytes], seed: int) -> Request:
    """Request ``index`` of the storm: (kind, valid?, a unary request or a stream's messages)."""
    rng = np.random.default_rng([seed, index])
    formats = sorted(images)
    if index % 5 == 0:
        name = formats[(index // 5) % len(formats)]
        return f"valid {name}", True, pb.PredictRequest(image=images[name], seed=index)
    draw = rng.random()
    if draw < 0.7:
        name = formats[int(rng.integers(0, len(formats)))]
        damage, blob = mutate(images[name], rng)
        return f"{name} {damage}", False, pb.PredictRequest(image=blob, seed=index)
    if draw < 0.8:
        return "bad tensor", False, pb.PredictRequest(tensor=bad_tensor(rng))
    if draw < 0.9:
        request = pb.PredictRequest(image=images["PNG"], seed=index)
        option = int(rng.integers(0, 5))
        if option == 0:
            request.mode = int(rng.choice([2, 99, -1]))  # not a SamplingMode
        elif option == 1:
            request.n_patches = int(rng.choice([-5, 65, 1 << 30]))
        elif option == 2:
            request.model_version = int(rng.choice([-1, 99, 1 << 62]))
        elif option == 3:
            request.model_name = (
                rng.integers(32, 127, int(rng.integers(1, 20000)), dtype=np.uint8).tobytes().decode()
            )
        else:
            request.tile.path = "../../etc/passwd"
        return (
            ["unknown mode", "bad n_patches", "bad version", "unknown model", "tile"][option],
            False,
            request,
        )
    png = images["PNG"]
    header = pb.PredictStreamRequest(header=pb.PredictRequest(n_patches=3))
    chunk = lambda data: pb.PredictStreamRequest(chunk=data)
    kind = int(rng.integers(0, 5))
    messages = [
        [chunk(png)],  # no header
        [header, header, chunk(png)],  # two headers
        [header],  # no pixels
        [pb.PredictStreamRequest(header=pb.PredictRequest(image=png[:100])), chunk(png[100:])],
        [header, *(chunk(png[i : i + 7]) for i in range(0, min(len(png), 700), 7))],  # tiny chunks, cut
    ][kind]
    return (
        ["stream without header", "two headers", "empty stream", "image in header", "cut stream"][kind],
        False,
        messages,
    )


@dataclasses.dataclass
class StormResult:
    requests: int
    fuzzed: Answers
    valid: Answers
    by_kind: dict[str, collections.Counter[str]]
    descriptors: tuple[int, int]
    rss: tuple[float, float, float]  # after warm-up, peak, after the storm
    quarters: list[float]  # RSS after each quarter of the storm: growth or a plateau


def storm(server: ServerProcess, count: int, warmup: int, clients: int = 8) -> StormResult:
    images = base_images()
    fuzzed, valid = Answers(), Answers()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def send(ch: grpc.Channel, request: Request, counted: bool) -> None:
        kind, is_valid, message = request
        stub = pb_grpc.AttentionSamplingStub(ch)
        if isinstance(message, list):
            call = lambda: stub.PredictStream(iter(message), timeout=60)
        else:
            call = lambda: stub.Predict(message, timeout=60)
        code, _ = (valid if is_valid else fuzzed).call(call) if counted else Answers().call(call)
        if counted:
            with fuzzed.lock:
                by_kind[kind][code] += 1

    def play(seed: int, indices: range, counted: bool) -> None:
        cursor = iter(indices)
        lock = threading.Lock()

        def body(ch: grpc.Channel, _: int) -> None:
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                send(ch, storm_request(index, images, seed), counted)

        run_clients(clients, body, server.target)

    pid = server.process.pid
    play(seed=1, indices=range(warmup), counted=False)  # allocators and caches reach their working size
    time.sleep(2)
    descriptors, rss_before = open_descriptors(pid), rss_mb(pid)
    quarters = []
    with RssSampler(pid) as rss:
        for quarter in range(4):
            play(seed=2, indices=range(quarter * count // 4, (quarter + 1) * count // 4), counted=True)
            quarters.append(rss_mb(pid))
        time.sleep(2)
    return StormResult(
        count,
        fuzzed,
        valid,
        dict(by_kind),
        (descriptors, open_descriptors(pid)),
        (rss_before, max(rss.samples), rss_mb(pid)),
        quarters,
    )


# -- 4: maximum-size bursts -------------------------------------------------------------
def largest_png(max_pixels: int) -> tuple[int, bytes]:
    """A square RGB checkerboard PNG of the largest side the pixel limit allows."""
    from PIL import Image

    side = math.isqrt(max_pixels)
    rows, columns = np.arange(side) // 97 % 2, np.arange(side) // 89 % 2
    pattern = ((rows[:, None] ^ columns[None, :]) * 200).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(pattern[:, :, None], 3, axis=2)).save(buffer, format="PNG", compress_level=9)
    return side, buffer.getvalue()


@dataclasses.dataclass
class BurstResult:
    concurrent: int
    answers: Answers
    idle_mb: float
    peak_mb: float
    settled_mb: float


def burst(server: ServerProcess, png: bytes, concurrent: int, settle_s: float) -> BurstResult:
    answers = Answers()
    pid = server.process.pid
    idle = rss_mb(pid)
    start = threading.Barrier(concurrent)

    def body(ch: grpc.Channel, index: int) -> None:
        stub = pb_grpc.AttentionSamplingStub(ch)
        start.wait()
        answers.call(lambda: stub.Predict(pb.PredictRequest(image=png, seed=index), timeout=600))

    with RssSampler(pid) as rss:
        run_clients(concurrent, body, server.target)
        time.sleep(settle_s)
    return BurstResult(concurrent, answers, idle, max(rss.samples), rss.samples[-1])


# -- 6: work after the deadline --------------------------------------------------------
LATE_TARGET = 0.10  # CPU spent on a request whose deadline passed, against a completed one
LATE_DEADLINE_S = 0.05


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class LateResult:
    completed_cpu_s: float  # server CPU of one completed maximum-size request
    late_cpu_s: float  # server CPU per request sent with a 50 ms deadline
    late_codes: collections.Counter[str]

    @property
    def ratio(self) -> float:
        return self.late_cpu_s / self.completed_cpu_s


def late_work(server: ServerProcess, png: bytes, count: int) -> LateResult:
    """Server CPU of a completed maximum-size request, then per request of
    ``count`` sent with a 50 ms deadline (measured once each had 3 s to stop)."""
    pid = server.process.pid
    answers = Answers()
    with channel(server.target) as ch:
        stub = pb_grpc.AttentionSamplingStub(ch)
        before = cpu_seconds(pid)
        stub.Predict(pb.PredictRequest(image=png, seed=1), timeout=600)
        completed = cpu_seconds(pid) - before
        background = idle_cpu_per_s(pid)
        started, before = time.monotonic(), cpu_seconds(pid)
        for index in range(count):
            request = pb.PredictRequest(image=png, seed=index)
            answers.call(lambda r=request: stub.Predict(r, timeout=LATE_DEADLINE_S))
        time.sleep(3)
        spent, elapsed = cpu_seconds(pid) - before, time.monotonic() - started
    late = (spent - background * elapsed) / count
    return LateResult(completed, max(late, 0.0), answers.codes)


def idle_cpu_per_s(pid: int) -> float:
    """The server's background CPU per second (health checks, polling)."""
    before = cpu_seconds(pid)
    time.sleep(2)
    return (cpu_seconds(pid) - before) / 2


# -- 5: hot reload -----------------------------------------------------------------
@dataclasses.dataclass
class ReloadResult:
    answers: Answers
    served: collections.Counter[int]
    naive_copy_failed_first: bool
    naive_copy_ready: bool


def version_state(stub: pb_grpc.AttentionSamplingStub, version: int) -> int | None:
    metadata = stub.GetModelMetadata(pb.GetModelMetadataRequest(model_name=SHIPPED), timeout=10)
    return next((v.state for v in metadata.versions if v.version == version), None)


def wait_state(stub: pb_grpc.AttentionSamplingStub, version: int, states: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if version_state(stub, version) in states:
            return True
        time.sleep(0.1)
    return False


def hot_reload(repository: pathlib.Path, server: ServerProcess, png: bytes, calm_s: float) -> ReloadResult:
    """8 clients while version 3 is renamed in, then version 4 is copied file by file."""
    source = ROOT / "models" / SHIPPED / "2"
    model = repository / SHIPPED
    answers = Answers()
    served: collections.Counter[int] = collections.Counter()
    done = threading.Event()

    def body(ch: grpc.Channel, index: int) -> None:
        stub = pb_grpc.AttentionSamplingStub(ch)
        seed = index << 20
        while not done.is_set():
            seed += 1
            code, reply = answers.call(
                lambda s=seed: stub.Predict(pb.PredictRequest(image=png, seed=s), timeout=60)
            )
            if code == "OK":
                with answers.lock:
                    served[reply.model_version] += 1

    clients = threading.Thread(target=run_clients, args=(8, body, server.target))
    clients.start()
    try:
        with channel(server.target) as ch:
            stub = pb_grpc.AttentionSamplingStub(ch)
            time.sleep(calm_s)
            shutil.copytree(source, repository.parent / "staging-3")
            (repository.parent / "staging-3").rename(model / "3")
            wait_state(stub, 3, {pb.ModelVersionStatus.READY}, 120)
            time.sleep(calm_s)
            failed_first = False
            files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
            for relative in sorted(files, key=lambda p: p.parts[0] == "variables"):
                if relative.parts[0] == "variables" and not (model / "4" / "variables").exists():
                    failed_first = wait_state(stub, 4, {pb.ModelVersionStatus.FAILED}, 30)
                (model / "4" / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / relative, model / "4" / relative)
            ready = wait_state(stub, 4, {pb.ModelVersionStatus.READY}, 60)
            time.sleep(calm_s)
    finally:
        done.set()
        clients.join()
    return ReloadResult(answers, served, failed_first, ready)


# -- the run -----------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    workdir: pathlib.Path
    flags: set[str]
    source: str  # the commit measured, read before the first server starts
    servers: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (scenario, exit code)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def server(
        self, scenario: str, repository: pathlib.Path | None = None, *flags: str
    ) -> Iterator[ServerProcess]:
        """A fresh SERVING server for one scenario; its exit code on SIGTERM is recorded."""
        name = re.sub(r"\W+", "-", scenario)
        server = ServerProcess(repository, self.workdir / f"server-{name}.log", "--drain-delay", "0", *flags)
        try:
            server.wait_serving()
            self.config = self.config or effective_config(server)
            yield server
        finally:
            alive = server.process.poll() is None
            self.servers.append((scenario, server.terminate() if alive else server.process.returncode))


def git_state() -> str:
    """The commit measured, and whether service/ had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {commit}" + (" with uncommitted changes under service/" if dirty else "")


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("**pass**" if passed else "**FAIL**")


def report(
    args: argparse.Namespace,
    run: Run,
    durations: Durations,
    loads: dict[str, LoadResult],
    stormed: StormResult,
    bursts: list[BurstResult],
    image_side: int,
    reload: ReloadResult,
    late: LateResult,
    minutes: float,
) -> str:
    config = run.config
    budget = config.get("memory_budget_bytes")
    upload_flags = sorted(f for f in run.flags if f.startswith("--upload-") and f.endswith("-timeout"))
    upload_settings = (
        ", ".join(f"{f[2:]} {config.get(f[2:].replace('-', '_'))} s" for f in upload_flags)
        if upload_flags
        else "none (this server has no upload timeouts)"
    )
    valid_answers = [
        *(r.answers for r in loads.values()),
        stormed.valid,
        *(b.answers for b in bursts),
        reload.answers,
    ]
    every = [*valid_answers, stormed.fuzzed]
    faults = sum(a.faults() for a in every)
    failed_valid = sum(a.failed() for a in valid_answers)
    overloaded = sum(a.codes[OVERLOAD] for a in valid_answers)
    fd_drift = stormed.descriptors[1] - stormed.descriptors[0]
    rss_drift = stormed.rss[2] / stormed.rss[0] - 1
    ceilings = [(b, (budget / MB + b.idle_mb) if isinstance(budget, int) else None) for b in bursts]
    peak_ok = None if budget is None else all(b.peak_mb <= c for b, c in ceilings if c is not None)
    settle = [b.settled_mb / b.idle_mb - 1 for b in bursts]
    exits = ", ".join(f"{scenario} {code}" for scenario, code in run.servers)
    lines = [
        "# Reliability benchmark",
        "",
        f"Generated by `python3 bench/bench_reliability.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')} ({minutes:.1f} min).",
        "",
        f"- Machine: {versions()}. The machine is shared: other jobs may run at the same time.",
        f"- Server: `ats-serve` from {run.source}; one fresh process per scenario, shipped `{SHIPPED}` "
        "(requests ask for its latest version), server defaults: "
        f"max_concurrent_predicts {config.get('max_concurrent_predicts')}, "
        f"queue_timeout {config.get('queue_timeout')} s, "
        f"max_concurrent_rpcs {config.get('max_concurrent_rpcs')}, "
        f"max_image_pixels {config.get('max_image_pixels')}, memory budget "
        f"{f'{budget / MB:.0f} MiB' if isinstance(budget, int) else 'none (no --memory-budget-bytes)'}, "
        f"upload timeouts: {upload_settings}.",
        "- Clients: threads of this process, each with its own connection, on loopback; server RSS is "
        "/proc/<pid>/status VmRSS sampled at 10 Hz; RESOURCE_EXHAUSTED is the documented answer under "
        "overload and is counted apart, not as a failure.",
        f"- Exit codes of the servers on SIGTERM: {exits}.",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
        f"| no INTERNAL or UNKNOWN answer, all scenarios | {faults} of {sum(a.total for a in every)} answers "
        f"| {verdict(faults == 0)} |",
        f"| no failed valid request (RESOURCE_EXHAUSTED under overload aside) | {failed_valid} failed, "
        f"{overloaded} RESOURCE_EXHAUSTED, of {sum(a.total for a in valid_answers)} | "
        f"{verdict(failed_valid == 0)} |",
        f"| open descriptors unchanged over the storm | {stormed.descriptors[0]} -> "
        f"{stormed.descriptors[1]} ({fd_drift:+d}) | {verdict(fd_drift == 0)} |",
        f"| RSS drift under {RSS_DRIFT_TARGET:.0%} over {stormed.requests:,} requests | "
        f"{stormed.rss[0]:.0f} -> {stormed.rss[2]:.0f} MB ({rss_drift:+.1%}) | "
        f"{verdict(rss_drift < RSS_DRIFT_TARGET)} |",
        "| peak RSS under memory budget + idle footprint, maximum-size bursts | "
        + "; ".join(
            f"{b.concurrent} at once: {b.peak_mb:.0f} MB"
            + (f" vs {c:.0f} MB" if c is not None else " (no budget to compare with)")
            for b, c in ceilings
        )
        + f" | {verdict(peak_ok)} |",
        f"| RSS within {SETTLE_TARGET:.0%} of pre-burst {durations.settle_s:g} s after a burst | "
        + "; ".join(f"{b.concurrent} at once: {s:+.0%}" for b, s in zip(bursts, settle, strict=True))
        + f" | {verdict(all(s <= SETTLE_TARGET for s in settle))} |",
        f"| no failed request during a hot reload | {reload.answers.failed()} failed of "
        f"{reload.answers.total} | {verdict(reload.answers.failed() == 0)} |",
        f"| CPU after a {LATE_DEADLINE_S * 1000:.0f} ms deadline under {LATE_TARGET:.0%} of a completed "
        f"request's | {late.late_cpu_s:.3f} s vs {late.completed_cpu_s:.2f} s ({late.ratio:.1%}) | "
        f"{verdict(late.ratio < LATE_TARGET)} |",
        "",
        f"## 1-2. Load: 16 clients, {durations.load_s:g} s, 1500x1500 canvas PNG",
        "",
        "| scenario | requests | answers by code | p50 / p99 (ms) | throughput (req/s) | server RSS start / "
        "peak / end (MB) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for label, result in loads.items():
        a = result.answers
        lines.append(
            f"| {label} | {a.total} | {codes_text(a.codes)} | {a.latency_ms()} | "
            f"{a.codes['OK'] / durations.load_s:.1f} | {result.rss} |"
        )
    for label, result in loads.items():
        if result.stalled is not None:
            streams = result.stalled
            ended = ", ".join(
                f"{code} after {statistics.median(seconds):.1f} s"
                for code, seconds in streams.lifetimes.items()
            )
            lines += [
                "",
                f"Stalled streams ({label}): {streams.opened} opened, 64 held open at any time (each "
                f"reopened when the server ended it). Final statuses: {codes_text(streams.finals)}. "
                f"Median time from opening to the server's answer: {ended or 'the server ended none'}.",
            ]
    lines += [
        "",
        f"## 3. Bad-input storm: {stormed.requests:,} requests after {durations.storm_warmup} warm-up ones, "
        "8 clients",
        "",
        "One request in five is valid (the canvas as PNG, JPEG, TIFF, WebP in turn); the others: byte flips, "
        "truncations, zeroed runs, insertions, header-only and appended garbage on those files (half of them "
        "within the first 512 bytes), tensors of bad shape, dtype or length, unknown SamplingMode and "
        "DataType values, bad n_patches, versions and model names, tile references on a server without "
        "--data-root, and malformed PredictStream uploads.",
        "",
        f"- Valid: {stormed.valid.total}, answers {codes_text(stormed.valid.codes)}; p50 / p99 "
        f"{stormed.valid.latency_ms()} ms.",
        f"- Fuzzed: {stormed.fuzzed.total}, answers {codes_text(stormed.fuzzed.codes)}.",
        f"- Open descriptors {stormed.descriptors[0]} -> {stormed.descriptors[1]}; RSS after warm-up "
        f"{stormed.rss[0]:.0f} MB, peak {stormed.rss[1]:.0f} MB, "
        f"2 s after the storm {stormed.rss[2]:.0f} MB; after each quarter of the storm "
        + ", ".join(f"{mb:.0f}" for mb in stormed.quarters)
        + " MB.",
        "",
        "| request kind | answers by code |",
        "| --- | --- |",
    ]
    lines += [f"| {kind} | {codes_text(codes)} |" for kind, codes in sorted(stormed.by_kind.items())]
    lines += [
        "",
        f"## 4. Maximum-size bursts: {image_side}x{image_side} RGB PNG",
        "",
        f"A checkerboard of the largest side the pixel limit allows ({image_side * image_side / 1e6:.0f} MP, "
        f"{image_side * image_side * 3 / MB:.0f} MiB of RGB pixels), sent at once by each client; a fresh "
        "server per burst.",
        "",
        "| concurrent | answers by code | latency p50 (s) | idle RSS (MB) | peak RSS (MB) "
        f"| budget + idle (MB) | RSS {durations.settle_s:g} s after (MB) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b, ceiling in ceilings:
        latency = f"{statistics.median(b.answers.latencies):.1f}" if b.answers.latencies else "-"
        lines.append(
            f"| {b.concurrent} | {codes_text(b.answers.codes)} | {latency} | {b.idle_mb:.0f} "
            f"| {b.peak_mb:.0f} | {f'{ceiling:.0f}' if ceiling is not None else 'no budget'} "
            f"| {b.settled_mb:.0f} |"
        )
    lines += [
        "",
        "## 5. Hot reload under 8 clients",
        "",
        f"A temporary repository with version 2 of `{SHIPPED}`; after {durations.reload_calm_s:g} s "
        "version 3 is copied beside it and renamed in; once it is READY, version 4 is copied file by file "
        "with `variables/` last, as `cp -r` does.",
        "",
        f"- Answers: {codes_text(reload.answers.codes)}; versions served: "
        + ", ".join(f"{v}: {n}" for v, n in sorted(reload.served.items()))
        + ".",
        "- Version 4 seen FAILED before its variables arrived: "
        f"{'yes' if reload.naive_copy_failed_first else 'no'}; READY once the copy completed, without a "
        f"restart: {'yes' if reload.naive_copy_ready else 'no'}.",
        "",
        f"## 6. Work after the deadline: {image_side}x{image_side} RGB PNG",
        "",
        f"One request completed, then {durations.late_requests} sent one after another with a "
        f"{LATE_DEADLINE_S * 1000:.0f} ms deadline; server CPU (/proc/<pid>/stat) measured 3 s after the "
        "last, less the idle server's background CPU.",
        "",
        f"- Completed: {late.completed_cpu_s:.2f} s of CPU. With the deadline: {late.late_cpu_s:.3f} s per "
        f"request ({late.ratio:.1%}); answers {codes_text(late.late_codes)}.",
    ]
    return "\n".join(lines) + "\n"


def progress(started: float, scenario: str, answers: Answers) -> None:
    print(f"{time.monotonic() - started:5.0f} s  {scenario}: {codes_text(answers.codes)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shortened durations, for a smoke test")
    parser.add_argument(
        "--output", help="table to write (default: bench/results/reliability.md, not with --quick)"
    )
    args = parser.parse_args()
    durations = QUICK if args.quick else FULL
    output = args.output or (None if args.quick else str(ROOT / "bench" / "results" / "reliability.md"))
    started = time.monotonic()
    png = canvas_png()
    with tempfile.TemporaryDirectory() as workdir:
        run = Run(pathlib.Path(workdir), server_flags(), git_state())
        loads = {}
        with run.server("load") as server:
            loads["load"] = load_scenario(server, png, durations.load_s)
        progress(started, "load", loads["load"].answers)
        with run.server("stalled") as server:
            loads["load + 64 stalled uploads"] = load_scenario(server, png, durations.load_s, stalled=64)
        progress(started, "stalled uploads", loads["load + 64 stalled uploads"].answers)
        with run.server("storm") as server:
            stormed = storm(server, durations.storm_requests, durations.storm_warmup)
        progress(started, "storm", stormed.fuzzed)
        side, largest = largest_png(int(run.config["max_image_pixels"]))
        bursts = []
        for concurrent in durations.bursts:
            with run.server(f"burst {concurrent}") as server:
                bursts.append(burst(server, largest, concurrent, durations.settle_s))
            progress(started, f"burst of {concurrent}", bursts[-1].answers)
        with run.server("late") as server:
            late = late_work(server, largest, durations.late_requests)
        progress(started, "late", Answers())
        del largest
        repository = pathlib.Path(workdir) / "repository"
        shutil.copytree(ROOT / "models" / SHIPPED / "2", repository / SHIPPED / "2")
        with run.server("reload", repository, "--poll-interval", "0.5") as server:
            reload = hot_reload(repository, server, png, durations.reload_calm_s)
        progress(started, "hot reload", reload.answers)
    text = report(
        args, run, durations, loads, stormed, bursts, side, reload, late, (time.monotonic() - started) / 60
    )
    if output:
        pathlib.Path(output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
