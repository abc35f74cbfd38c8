"""Protocol benchmark: the same 1500x1500 PNG through every protocol the
server speaks, in one run against one ``ats-serve``: ats.v1, the Open
Inference Protocol over gRPC and over HTTP/REST (binary data), and TF
Serving's Predict. p50 of one client alone, then p50 and throughput with 8
client processes (target: OIP gRPC within 10% of ats.v1 at p50), and the
server's own mean time per prediction of each protocol (its
``ats_request_seconds`` histogram, labelled by protocol), which leaves out
the client and the network.

Uses the shipped model when present, else a tiny random-weight one (as
bench_service.py; the table says which).

    python bench/bench_protocols.py          # writes bench/results/protocols.md
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import pathlib
import struct
import tempfile
import time
import urllib.request
from collections.abc import Callable

from bench_service import SERVER_FLAGS, canvas_png, model_repository, percentile, versions
from common import ROOT, ServerProcess
from prometheus_client.parser import text_string_to_metric_families

PROTOCOLS = ("ats.v1", "OIP gRPC", "OIP HTTP", "TF Serving Predict")
# The ``protocol`` label each one is counted under in the server's metrics.
LABELS = {
    "ats.v1": "ats.v1",
    "OIP gRPC": "oip.grpc",
    "OIP HTTP": "oip.http",
    "TF Serving Predict": "tfserving",
}
CLIENTS = 8


def _caller(protocol: str, target: str, http_port: int, model: str, png: bytes) -> Callable[[int], object]:
    """One prediction of ``png`` with seed ``i`` through ``protocol``, on a connection kept open."""
    if protocol == "ats.v1":
        from ats_client import AtsClient

        client = AtsClient(target)
        return lambda i: client.predict(png, model=model, seed=i)
    import grpc

    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    if protocol == "OIP gRPC":
        from ats_api.oip.v2 import open_inference_pb2 as oip
        from ats_api.oip.v2 import open_inference_pb2_grpc as oip_grpc

        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        tensor = oip.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
        raw = struct.pack("<I", len(png)) + png

        def infer(i: int) -> object:
            request = oip.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw])
            request.parameters["seed"].int64_param = i
            return stub.ModelInfer(request, timeout=120)

        return infer
    if protocol == "OIP HTTP":
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=120)
        element = struct.pack("<I", len(png)) + png

        def post(i: int) -> object:
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "BYTES",
                            "shape": [1],
                            "parameters": {"binary_data_size": len(element)},
                        }
                    ],
                    "parameters": {"seed": i, "binary_data_output": True},
                }
            ).encode()
            connection.request(
                "POST",
                f"/v2/models/{model}/infer",
                body=header + element,
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
            reply = connection.getresponse()
            body = reply.read()
            assert reply.status == 200, body[:200]
            return body

        return post
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict

    def tfs(i: int) -> object:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["image"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[png]))
        request.inputs["seed"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[i]))
        return predict(request, timeout=120)

    return tfs


def _worker(
    protocol: str,
    target: str,
    http_port: int,
    model: str,
    png: bytes,
    duration: float,
    ready,
    go,
    start,
    results,
) -> None:
    call = _caller(protocol, target, http_port, model, png)
    call(0)  # connect and warm before the clock starts
    ready.put(True)
    go.wait()
    while time.time() < start.value:
        time.sleep(0.001)
    latencies, end = [], start.value + duration
    while time.time() < end:
        began = time.perf_counter()
        call(len(latencies) + 1)
        latencies.append(time.perf_counter() - began)
    results.put(latencies)


def run(
    protocol: str,
    server: ServerProcess,
    model: str,
    png: bytes,
    clients: int,
    duration: float,
    when_warm: Callable[[], object] = lambda: None,
) -> tuple[float, list[float]]:
    """Requests per second and latencies of ``clients`` processes calling through
    ``protocol``; ``when_warm`` runs once every client made its warm-up call."""
    context = multiprocessing.get_context("spawn")
    ready, results, go, start = context.Queue(), context.Queue(), context.Event(), context.Value("d", 0.0)
    workers = [
        context.Process(
            target=_worker,
            args=(protocol, server.target, server.http_port, model, png, duration, ready, go, start, results),
        )
        for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=300)
    when_warm()
    start.value = time.time() + 1
    go.set()
    latencies = [t for _ in workers for t in results.get(timeout=duration + 300)]
    for worker in workers:
        worker.join()
    return len(latencies) / duration, latencies


def served(server: ServerProcess, protocol: str) -> tuple[float, float]:
    """(seconds, predictions) the server has counted in ``ats_request_seconds`` for ``protocol``."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    total = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kind = sample.name.removeprefix("ats_request_seconds_")
            if kind in total and sample.labels.get("protocol") == LABELS[protocol]:
                total[kind] += sample.value
    return total["sum"], total["count"]


class Counted:
    """``ats_request_seconds`` of one protocol, read when ``read`` is called."""

    def __init__(self, server: ServerProcess, protocol: str) -> None:
        self.server, self.protocol = server, protocol
        self.seconds, self.count = served(server, protocol)

    def read(self) -> None:
        self.seconds, self.count = served(self.server, self.protocol)

    def mean_since(self, earlier: Counted) -> float:
        """Mean seconds per prediction counted between ``earlier``'s reading and this one."""
        return (self.seconds - earlier.seconds) / max(self.count - earlier.count, 1)


def report(model: str, rows: dict[str, tuple[float, float, float, float]], duration: float) -> str:
    reference = rows["ats.v1"]
    lines = [
        "# Protocols: one 1500x1500 PNG through every front end",
        "",
        "Written by `python bench/bench_protocols.py`. " + versions(),
        "",
        f"Model: {model}. One `ats-serve` on loopback, the Megapixel-digits canvas PNG of "
        "`bench_service.py`; each protocol sends the encoded file (OIP: BYTES `image` as raw/binary data; "
        "TF Serving: DT_STRING), one seed per request, every output back. p50 alone: one client; with "
        f"{CLIENTS} clients: {CLIENTS} processes sending back to back for {duration:g} s (they share the "
        "machine's cores with the server), after an unmeasured warm-up run.",
        "",
        f"| protocol | p50 alone (ms) | vs ats.v1 | server mean alone (ms) | p50 at {CLIENTS} clients (ms) "
        f"| throughput at {CLIENTS} clients (req/s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for protocol, (alone, server_mean, loaded, rate) in rows.items():
        lines.append(
            f"| {protocol} | {alone * 1e3:.1f} | {100 * (alone / reference[0] - 1):+.1f}% | "
            f"{server_mean * 1e3:.1f} | {loaded * 1e3:.1f} | {rate:.1f} |"
        )
    lines += [
        "",
        f"On a 2-core machine the {CLIENTS} client processes compete with the server for the cores, so "
        f"the {CLIENTS}-client columns vary by up to half between runs (a 4 s run gave 34.8, 36.5, "
        "41.8 and 40.5 req/s in this order); the single-client p50 is the comparison between protocols. "
        "The server mean is measured inside the server, from the call's start (body, upload, queue) to "
        "its answer: the difference to the client's p50 is the transport and the client's own work.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "protocols.md"))
    args = parser.parse_args()
    png = canvas_png()
    with tempfile.TemporaryDirectory() as workdir:
        repository, name, described = model_repository(pathlib.Path(workdir))
        server = ServerProcess(repository, pathlib.Path(workdir) / "server.log", *SERVER_FLAGS)
        try:
            server.wait_serving()
            # warm-up, not measured, so the first protocol does not pay for it
            run(PROTOCOLS[0], server, name, png, CLIENTS, args.duration / 2)
            rows = {}
            for protocol in PROTOCOLS:
                before = Counted(server, protocol)
                _, alone = run(protocol, server, name, png, 1, args.duration / 2, before.read)
                server_mean = Counted(server, protocol).mean_since(before)
                rate, loaded = run(protocol, server, name, png, CLIENTS, args.duration)
                rows[protocol] = (percentile(alone, 50), server_mean, percentile(loaded, 50), rate)
                print(protocol, rows[protocol], flush=True)
        finally:
            server.kill()
    text = report(described, rows, args.duration)
    pathlib.Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
