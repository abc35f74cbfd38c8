"""Security benchmark: what TLS and token checking add to a 1500x1500 PNG request.

Two ``ats-serve`` processes with the same model and flags run side by side,
one plaintext, one with TLS (certificates from docker/make-dev-certs.py) and
a token file, so both are measured in the same run on the same machine load:

- one client alternating between them, request by request, on open
  connections: p50 and p99 of each (target: TLS + tokens under 5% at p50);
- 8 client processes switching together between the servers every few
  seconds: throughput and p50 of each;
- a new connection's cost (channel, handshake, one health check), which
  the target does not cover: clients keep their connections;
- the token check itself, in process.

    python bench/bench_security.py            # writes bench/results/security.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench_service import SERVER_FLAGS, canvas_png, model_repository, percentile
from common import ROOT, ServerProcess, load_dev_certs
from machine import describe

KINDS = ("plaintext", "TLS + token")
TARGET = 0.05


def _slot_worker(
    servers: dict[str, tuple[str, dict]], png: bytes, start_at: float, slot: float, slots: int, results
) -> None:
    """Send ``png`` back to back to the server of each time slot: per request (kind, slot,
    seconds, whether it ended within its slot, this process's CPU seconds)."""
    from ats_client import AtsClient

    clients = {kind: AtsClient(target, **options) for kind, (target, options) in servers.items()}
    measured = []
    try:
        for client in clients.values():
            client.predict(png, seed=0)  # connected before the clock starts
        for index in range(slots):
            kind, begins = KINDS[index % 2], start_at + index * slot
            while time.time() < begins:
                time.sleep(0.001)
            while time.time() < begins + slot:
                started, cpu = time.perf_counter(), time.process_time()
                clients[kind].predict(png, seed=len(measured))
                seconds = time.perf_counter() - started
                measured.append(
                    (kind, index, seconds, time.time() < begins + slot, time.process_time() - cpu)
                )
    finally:
        for client in clients.values():
            client.close()
    results.put(measured)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux /proc)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def under_load(
    servers: dict[str, ServerProcess], png: bytes, clients: int, slot: float, slots: int
) -> tuple[list[tuple[str, int, float, bool, float]], dict[str, float]]:
    """``clients`` processes sending to one server at a time, all switching servers together
    every ``slot`` seconds, so both see the same load from the rest of the machine: the
    requests, and the CPU seconds each server used meanwhile."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 10  # time for every process to import and connect
    targets = {kind: (server.target, server.client_options) for kind, server in servers.items()}
    arguments = (targets, png, start_at, slot, slots, results)
    workers = [context.Process(target=_slot_worker, args=arguments) for _ in range(clients)]
    for worker in workers:
        worker.start()
    time.sleep(max(0.0, start_at - time.time()))
    before = {kind: cpu_seconds(server.process.pid) for kind, server in servers.items()}
    measured = [m for _ in workers for m in results.get(timeout=slot * slots + 120)]
    used = {kind: cpu_seconds(server.process.pid) - before[kind] for kind, server in servers.items()}
    for worker in workers:
        worker.join()
    return measured, used


def alternating(servers: dict[str, ServerProcess], png: bytes, runs: int) -> dict[str, list[float]]:
    """One client, one request to each server in turn (which goes first alternates)."""
    from ats_client import AtsClient

    clients = {kind: AtsClient(s.target, **s.client_options) for kind, s in servers.items()}
    seconds: dict[str, list[float]] = {kind: [] for kind in servers}
    try:
        for i in range(runs + 5):
            for kind in KINDS if i % 2 else reversed(KINDS):
                started = time.perf_counter()
                clients[kind].predict(png, seed=i)
                if i >= 5:  # warm-up: connections, first requests
                    seconds[kind].append(time.perf_counter() - started)
    finally:
        for client in clients.values():
            client.close()
    return seconds


def new_connections(servers: dict[str, ServerProcess], runs: int) -> dict[str, list[float]]:
    """Seconds for a new channel to connect and answer one health check."""
    from ats_client import AtsClient

    seconds: dict[str, list[float]] = {kind: [] for kind in servers}
    for _ in range(runs):
        for kind, server in servers.items():
            started = time.perf_counter()
            with AtsClient(server.target, retries=0, **server.client_options) as client:
                client.health()
            seconds[kind].append(time.perf_counter() - started)
    return seconds


def per_call(function: Callable[[], Any], calls: int = 20_000) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls


def token_check_seconds(workdir: pathlib.Path, token: str, dev_certs) -> dict[int, float]:
    """Seconds per accepted-token check with 1 and 100 hashes in the file."""
    from service.server.auth import TokenFile

    measured = {}
    for count in (1, 100):
        path = workdir / f"tokens-{count}"
        lines = [dev_certs.token_hash(f"other-{i}") for i in range(count - 1)] + [dev_certs.token_hash(token)]
        dev_certs.write(path, ("\n".join(lines) + "\n").encode(), 0o600)
        tokens = TokenFile(str(path))
        assert tokens.accepts(token)
        measured[count] = per_call(lambda t=tokens: t.accepts(token))
    return measured


def versions() -> str:
    import cryptography
    import grpc
    import tensorflow as tf

    return describe(
        TensorFlow=tf.__version__,
        grpcio=grpc.__version__,
        cryptography=cryptography.__version__,
        **{"Python ssl": ssl.OPENSSL_VERSION},
    )


def report(args, model: str, png: bytes, paired, loads, connections, tokens) -> str:
    ms = lambda s: f"{s * 1000:.1f}"
    plain, secure = (statistics.median(paired[k]) for k in KINDS)
    overhead = (secure - plain) / plain
    lines = [
        "# Security benchmark",
        "",
        f"Generated by `python bench/bench_security.py` on {time.strftime('%Y-%m-%d')}.",
        "",
        f"- Machine: {versions()}. The machine is shared: other jobs may run at the same time.",
        f"- Model: {model}.",
        f"- Image: a 1500x1500 Megapixel-digits canvas, PNG, {len(png) / 1e3:.1f} kB, one unary Predict.",
        "- Two `ats-serve` processes with the same model and flags, side by side on loopback: "
        "plaintext, and TLS (P-256 certificate from `docker/make-dev-certs.py`, no client "
        "certificate) with `--auth-tokens-file` (one `sha256:` line; every call of the inference "
        "group checked). gRPC's TLS is its own BoringSSL, not Python's ssl.",
        "",
        "## One client, requests alternating between the servers",
        "",
        f"{args.runs} requests to each after 5 warm-up pairs, on open connections.",
        "",
        "| server | p50 (ms) | p99 (ms) |",
        "| --- | ---: | ---: |",
    ]
    for kind in KINDS:
        lines.append(
            f"| {kind} | {ms(statistics.median(paired[kind]))} | {ms(percentile(paired[kind], 99))} |"
        )
    verdict = "met" if overhead < TARGET else "missed"
    lines += [
        "",
        f"TLS + token over plaintext at p50: **{100 * overhead:+.1f}%** ({ms(secure - plain)} ms); "
        f"target under {100 * TARGET:.0f}%: **{verdict}**.",
        "",
        f"## {args.clients} concurrent clients",
        "",
        f"{args.clients} client processes send the canvas back to back, all to the same server, and "
        f"switch servers together every {args.slot:g} s, {args.slots} slots in all (the first to "
        "plaintext): both servers see the same load from the rest of the machine. Counted: the "
        "requests that end within their slot. The servers allow 8 predictions at once.",
        "",
        "| server | requests | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    requests, server_cpu = loads
    seconds = {k: [t for kind, _, t, inside, _ in requests if kind == k and inside] for k in KINDS}
    rate = {k: len(seconds[k]) / (args.slot * args.slots / 2) for k in KINDS}
    for kind in KINDS:
        lines.append(
            f"| {kind} | {len(seconds[kind])} | {rate[kind]:.1f} | "
            f"{ms(statistics.median(seconds[kind]))} | {ms(percentile(seconds[kind], 99))} |"
        )
    per_slot = [
        sum(1 for _, i, _, inside, _ in requests if i == index and inside) / args.slot
        for index in range(args.slots)
    ]
    ratios = [per_slot[i + 1] / per_slot[i] for i in range(0, args.slots - 1, 2)]
    p50 = {k: statistics.median(seconds[k]) for k in KINDS}
    loaded = p50[KINDS[1]] / p50[KINDS[0]] - 1
    lines += [
        "",
        f"TLS + token over plaintext: p50 **{100 * loaded:+.1f}%** (target under {100 * TARGET:.0f}%: "
        f"**{'met' if loaded < TARGET else 'missed'}**), throughput "
        f"{100 * (rate[KINDS[1]] / rate[KINDS[0]] - 1):+.1f}%; over the {len(ratios)} pairs of adjacent "
        f"slots the throughput ratio ranges {min(ratios):.2f} to {max(ratios):.2f} (median "
        f"{statistics.median(ratios):.2f}): differences inside that range are the shared machine's noise.",
        "",
        "CPU per request, which the rest of the machine disturbs less than time does (every request "
        "served in the run, straddling ones included; a server's idle threads are in its figure):",
        "",
        "| server | server process CPU per request (ms) | client process CPU per request (ms) |",
        "| --- | ---: | ---: |",
    ]
    for kind in KINDS:
        served = [cpu for k, _, _, _, cpu in requests if k == kind]
        lines.append(f"| {kind} | {ms(server_cpu[kind] / len(served))} | {ms(statistics.mean(served))} |")
    lines += [
        "",
        "Clients and servers share the machine's cores here, so what the clients spend on TLS also "
        "comes out of the servers' throughput; with clients elsewhere, it would not.",
        "",
        "## Outside the target",
        "",
        f"- A new connection (channel, handshake, one health check), p50 over {args.connections}: "
        + ", ".join(f"{k} {ms(statistics.median(connections[k]))} ms" for k in KINDS)
        + ". Clients that keep their channel (AtsClient does) pay it once.",
        "- The token check in process (SHA-256 of the token, then `hmac.compare_digest` with every "
        "hash in the file): "
        + ", ".join(f"{tokens[n] * 1e6:.1f} µs with {n} hash{'es' if n > 1 else ''}" for n in sorted(tokens))
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="requests per server, one client")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client processes")
    parser.add_argument("--slot", type=float, default=5.0, help="seconds on one server before switching")
    parser.add_argument("--slots", type=int, default=24, help="slots in all, half per server (even)")
    parser.add_argument("--connections", type=int, default=30, help="new connections per server")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "security.md"))
    args = parser.parse_args()
    png = canvas_png()
    dev_certs = load_dev_certs()
    with tempfile.TemporaryDirectory() as temporary:
        workdir = pathlib.Path(temporary)
        dev_certs.make_all(workdir / "pki")
        pki = lambda name: str(workdir / "pki" / name)
        token = (workdir / "pki" / "token").read_text().strip()
        repository, _, model = model_repository(workdir)
        secure_flags = (
            *("--tls-cert", pki("server.pem"), "--tls-key", pki("server-key.pem")),
            *("--auth-tokens-file", pki("tokens.sha256")),
        )
        servers = {
            KINDS[0]: ServerProcess(repository, workdir / "plain.log", *SERVER_FLAGS),
            KINDS[1]: ServerProcess(
                repository,
                workdir / "secure.log",
                *SERVER_FLAGS,
                *secure_flags,
                client={"tls_ca": pki("ca.pem"), "token": token},
            ),
        }
        try:
            for server in servers.values():
                server.wait_serving()
            paired = alternating(servers, png, args.runs)
            loads = under_load(servers, png, args.clients, args.slot, args.slots)
            connections = new_connections(servers, args.connections)
        finally:
            for server in servers.values():
                server.terminate()
        tokens = token_check_seconds(workdir, token, dev_certs)
    text = report(args, model, png, paired, loads, connections, tokens)
    pathlib.Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
