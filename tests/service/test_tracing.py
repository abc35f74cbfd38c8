"""Tracing: off, one shared no-op span and no spans at all; on, a span per
request and per stage, children of the caller's W3C trace context, exported
where the OTEL_* variables say.

In process, spans go to the SDK's in-memory exporter. End to end, real
``ats-serve`` processes export over OTLP/gRPC to a trace collector served by
this test (opentelemetry-proto's TraceService) and over OTLP/HTTP to a plain
HTTP receiver."""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import secrets
import threading
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc
from service import errors, tracing
from service.config import load_config
from service.pipeline.runner import STAGES
from tests.service import test_dataplane
from tests.support import TINY_MODEL, encode_image, random_image

# The in-process data plane of the data plane's own tests.
loop = test_dataplane.loop
plane = test_dataplane.plane


@pytest.fixture()
def memory() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, into an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(True, provider)
    yield exporter
    tracing.configure(False)


def test_tracing_is_off_by_default_and_a_flag_or_variable_turns_it_on():
    assert not load_config([], environ={})[0].tracing
    assert load_config(["--tracing"], environ={})[0].tracing
    assert load_config([], environ={"ATS_TRACING": "true"})[0].tracing
    assert not load_config([], environ={"ATS_TRACING": "0"})[0].tracing
    assert not load_config(["--tracing", "false"], environ={"ATS_TRACING": "1"})[0].tracing


def test_off_every_span_is_the_one_shared_no_op_and_functions_run_as_they_are():
    tracing.configure(False)
    assert not tracing.enabled()
    spans = [tracing.span(f"ats.stage.{stage}") for stage in STAGES]
    spans.append(tracing.span("ats.predict", model="tiny"))
    assert all(span is tracing.OFF for span in spans)
    with tracing.span("ats.batch.queue") as span:
        span.set_attribute("ats.size", 3)  # accepted and dropped
    assert not span.is_recording()

    def work() -> int:
        return 7

    assert tracing.bind(work) is work
    assert tracing.server_interceptors([pb.DESCRIPTOR.services_by_name["AttentionSampling"]]) == []


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def test_a_prediction_is_a_span_with_its_stages_as_children_across_the_worker_thread(plane, loop, memory):
    served = test_dataplane.predict(plane, loop, test_dataplane.pixels_call)
    named = by_name(memory.get_finished_spans())
    (predict,) = named["ats.predict"]
    assert predict.parent is None and predict.status.is_ok
    assert dict(predict.attributes or {}) == {
        "ats.protocol": "ats.v1",
        "ats.model": TINY_MODEL,
        "ats.version": "1",
        "ats.code": "OK",
    }
    stages = sorted(
        (span for span in memory.get_finished_spans() if span.name.startswith("ats.stage.")), key=start
    )
    assert [span.name for span in stages] == [f"ats.stage.{stage}" for stage in STAGES]
    for span in stages:
        assert span.context.trace_id == predict.context.trace_id
        assert span.parent is not None and span.parent.span_id == predict.context.span_id
        assert predict.start_time <= span.start_time <= span.end_time <= predict.end_time
    measured = {
        span.name.removeprefix("ats.stage."): (span.end_time - span.start_time) / 1e9 for span in stages
    }
    for stage in STAGES:  # the span times what the prediction reports
        assert measured[stage] == pytest.approx(served.prediction.timings[stage], abs=2e-3)


def test_a_refused_prediction_records_its_code_and_no_client_text(plane, loop, memory):
    name = "no-such-model-" + secrets.token_hex(4)
    with pytest.raises(errors.NotFound):
        test_dataplane.predict(plane, loop, lambda: test_dataplane.pixels_call(model=name))
    (predict,) = memory.get_finished_spans()
    assert dict(predict.attributes or {}) == {"ats.protocol": "ats.v1", "ats.code": "NOT_FOUND"}
    assert not predict.status.is_ok and predict.status.description == "NotFound"
    assert not predict.events  # no exception event: its message quotes the request
    assert name not in str(predict.to_json())


def start(span: ReadableSpan | Span) -> int:
    return span.start_time if isinstance(span, ReadableSpan) else span.start_time_unix_nano


# -- end to end: real servers exporting to receivers in this process --------


def value(attribute: KeyValue) -> object:
    return getattr(attribute.value, attribute.value.WhichOneof("value"))


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                service = {a.key: value(a) for a in resource_spans.resource.attributes}["service.name"]
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((str(service), span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of(self, service: str) -> list[Span]:
        with self._lock:
            return [span for name, span in self.spans if name == service]


@pytest.fixture()
def collector() -> Iterator[tuple[Collector, str]]:
    """(collector, its endpoint URL)."""
    servicer = Collector()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"http://127.0.0.1:{port}"
    server.stop(0)


def otlp_environment(endpoint: str, service: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": service,
        # spans leave at shutdown only: the drain must flush them
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }


def traced_predict(target: str, request: pb.PredictRequest) -> tuple[bytes, bytes]:
    """Send ``request`` with a fresh W3C traceparent, as a caller inside a
    sampled span of its own would; returns (trace id, the caller's span id)."""
    trace_id, parent_id = secrets.token_bytes(16), secrets.token_bytes(8)
    traceparent = f"00-{trace_id.hex()}-{parent_id.hex()}-01"
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.AttentionSamplingStub(channel).Predict(
            request, timeout=60, metadata=(("traceparent", traceparent),)
        )
    assert len(response.probabilities) == 10
    return trace_id, parent_id


def traced_rest_infer(url: str) -> tuple[bytes, bytes]:
    """An OIP REST infer with a fresh W3C traceparent header: (trace id, the caller's span id)."""
    trace_id, parent_id = secrets.token_bytes(16), secrets.token_bytes(8)
    pixels = random_image(64, 64, seed=4)
    body = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ]
    }
    request = urllib.request.Request(
        f"{url}/v2/models/tiny/infer",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "traceparent": f"00-{trace_id.hex()}-{parent_id.hex()}-01",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
    return trace_id, parent_id


def attributes(span: Span) -> dict[str, object]:
    return {a.key: value(a) for a in span.attributes}


@pytest.mark.slow
def test_a_served_prediction_continues_the_callers_trace(start_server, make_repository, collector, tmp_path):
    receiver, endpoint = collector
    data = tmp_path / "data"
    data.mkdir()
    (data / "slide-1234.png").write_bytes(encode_image(random_image(400, 400, seed=3)))
    repository = make_repository()
    server = start_server(
        repository,
        "--tracing",
        "--data-root",
        str(data),
        env=otlp_environment(endpoint, "ats-traced"),
    )
    silent = start_server(repository, env=otlp_environment(endpoint, "ats-untraced"))
    image = pb.PredictRequest(image=encode_image(random_image(300, 300)), seed=1)
    trace_id, caller = traced_predict(server.target, image)
    tile_trace, _ = traced_predict(
        server.target, pb.PredictRequest(tile=pb.TileReference(path="slide-1234.png"), n_patches=5, seed=1)
    )
    traced_predict(silent.target, image)
    rest_trace, rest_caller = traced_rest_infer(server.http_url)
    assert server.terminate() == 0 and silent.terminate() == 0  # the drain flushes
    assert receiver.of("ats-untraced") == []

    spans = [span for span in receiver.of("ats-traced") if span.trace_id == trace_id]
    named = {span.name: span for span in spans}
    rpc = named["/ats.v1.AttentionSampling/Predict"]
    assert rpc.parent_span_id == caller and rpc.kind == Span.SPAN_KIND_SERVER
    predict = named["ats.predict"]
    assert predict.parent_span_id == rpc.span_id
    assert attributes(predict) == {
        "ats.protocol": "ats.v1",
        "ats.model": TINY_MODEL,
        "ats.version": "1",
        "ats.code": "OK",
    }
    stages = sorted((span for span in spans if span.name.startswith("ats.stage.")), key=start)
    assert [span.name for span in stages] == [f"ats.stage.{stage}" for stage in STAGES]
    assert all(span.parent_span_id == predict.span_id for span in stages)
    assert rpc.start_time_unix_nano <= predict.start_time_unix_nano
    assert predict.end_time_unix_nano <= rpc.end_time_unix_nano
    previous_end = predict.start_time_unix_nano
    for span in stages:  # one after the other, inside the request
        assert (
            previous_end <= span.start_time_unix_nano <= span.end_time_unix_nano <= predict.end_time_unix_nano
        )
        previous_end = span.end_time_unix_nano
    assert sum(span.end_time_unix_nano - span.start_time_unix_nano for span in stages) > 0
    assert predict.end_time_unix_nano - predict.start_time_unix_nano < 30e9
    # nothing else (health checks are not traced) but, when batching is on, the wait for a batch
    queued = [span for span in spans if span.name == "ats.batch.queue"]
    assert len(spans) == 2 + len(STAGES) + len(queued) and len(queued) <= 1
    assert all(span.parent_span_id == predict.span_id for span in queued)
    assert not [span for span in receiver.of("ats-traced") if "Health" in span.name]

    # an HTTP call's traceparent header is continued too (no gRPC span: the request span is its child)
    [rest_predict] = [
        span
        for span in receiver.of("ats-traced")
        if span.trace_id == rest_trace and span.name == "ats.predict"
    ]
    assert (
        rest_predict.parent_span_id == rest_caller and attributes(rest_predict)["ats.protocol"] == "oip.http"
    )

    tile_spans = [span for span in receiver.of("ats-traced") if span.trace_id == tile_trace]
    tile_stages = sorted((span for span in tile_spans if span.name.startswith("ats.stage.")), key=start)
    assert [span.name for span in tile_stages] == [
        f"ats.stage.{stage}" for stage in STAGES
    ]  # the staged path
    stage_of = {span.span_id: span.name for span in tile_spans}
    reads = sorted((span for span in tile_spans if span.name == "ats.tile.read"), key=start)
    assert [stage_of[span.parent_span_id] for span in reads] == ["ats.stage.lowres", "ats.stage.extract"]
    low, patches = (attributes(span) for span in reads)
    assert low["ats.level"] == 0 and low["ats.regions"] == 1 and int(low["ats.bytes_read"]) > 0
    assert patches["ats.level"] == 0 and patches["ats.regions"] == 5
    assert int(patches["ats.bytes_read"]) == 0  # the level is in the tile cache by then
    assert "slide-1234" not in repr([attributes(span) for span in tile_spans])


class OtlpHttpHandler(http.server.BaseHTTPRequestHandler):
    """POST /v1/traces: a protobuf ExportTraceServiceRequest, kept by the server."""

    server: HttpCollector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.server.received.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

    def log_message(self, *args: object) -> None:
        pass


class HttpCollector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on a free loopback port."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OtlpHttpHandler)
        self.received: list[trace_service_pb2.ExportTraceServiceRequest] = []


def test_the_otlp_protocol_variable_picks_the_http_exporter(monkeypatch):
    receiver = HttpCollector()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.server_port}")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    try:
        tracing.configure(True)
        with tracing.span("ats.batch.queue", size=3):
            pass
        tracing.shutdown()  # flushes: the export is done when it returns
    finally:
        receiver.shutdown()
    (request,) = receiver.received
    (resource_spans,) = request.resource_spans
    assert {a.key: value(a) for a in resource_spans.resource.attributes}["service.name"] == "ats-serve"
    (span,) = resource_spans.scope_spans[0].spans
    assert span.name == "ats.batch.queue" and attributes(span) == {"ats.size": 3}


def test_an_exporter_that_is_not_installed_stops_the_start(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(RuntimeError, match="zipkin"):
        tracing.configure(True)
    assert not tracing.enabled()


def test_the_exporter_none_traces_into_nothing(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    tracing.configure(True)
    try:
        with tracing.span("ats.predict") as span:
            assert span.is_recording()
    finally:
        tracing.configure(False)
