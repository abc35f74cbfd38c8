"""The data plane in process, without any protocol: it resolves, admits, runs
and counts every request exactly once, and its errors map to gRPC statuses
through one complete table."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry

from service import errors
from service.admission import Admission
from service.budget import MemoryBudget
from service.dataplane import ATS_V1, DataPlane, Endpoint, InternalError, PredictCall
from service.metrics import Metrics
from service.models.repository import ModelRegistry
from service.models.warmup import warm_up
from service.pipeline.payload import RawTensor
from service.pipeline.runner import PredictOptions
from service.pipeline.sources import SourceLimits, SourceRegistry
from service.server import status
from service.uploads import Upload, UploadLimits, Uploads

PREDICT = Endpoint(ATS_V1, "Predict")
PREDICT_STREAM = Endpoint(ATS_V1, "PredictStream")
GET_MODEL_METADATA = Endpoint(ATS_V1, "GetModelMetadata")


class FakeCall:
    """A caller with some time left (None: no deadline)."""

    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: the plane's semaphores belong to the loop that first waits on them."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def plane(tmp_path_factory, tiny_model_dir, loop):
    root = tmp_path_factory.mktemp("plane-repo")
    shutil.copytree(tiny_model_dir, root / "tiny" / "1")
    models = ModelRegistry(root, "", warm_up)
    models.poll_once()
    sources = SourceRegistry(SourceLimits(max_image_pixels=10_000_000, max_image_bytes=64 << 20))
    uploads = Uploads(UploadLimits(1.0, 1.0, 10.0, 2, 256 << 20, 64 << 20, 10_000_000), queue_timeout=0.2)
    executor = concurrent.futures.ThreadPoolExecutor(2)
    yield DataPlane(
        models,
        sources,
        Metrics(CollectorRegistry()),
        Admission(2, 0.2),
        uploads,
        MemoryBudget(1 << 30),
        executor,
    )
    executor.shutdown()


def predict(plane: DataPlane, loop, read, call: FakeCall | None = None):
    async def read_async() -> PredictCall:
        return read()

    return loop.run_until_complete(plane.predict(PREDICT, read_async, call or FakeCall()))


def requests_counted(plane: DataPlane, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(
        sample.value
        for family in plane.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "ats_requests_total" and wanted <= set(sample.labels.items())
    )


def pixels_call(model: str = "", version: int = 0, options: PredictOptions | None = None) -> PredictCall:
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    tensor = RawTensor(shape=image.shape, dtype="uint8", data=image.tobytes())

    async def payload(upload: Upload) -> RawTensor:
        return tensor

    return PredictCall(model, version, options or PredictOptions(seed=1), payload)


def test_a_prediction_is_resolved_run_and_counted_once(plane, loop):
    before = requests_counted(plane, model="tiny", version="1", rpc="Predict", code="OK")
    served = predict(plane, loop, pixels_call)
    assert served.model.name == "tiny" and served.model.version == 1
    assert served.prediction.probabilities.shape == (10,)
    assert requests_counted(plane, model="tiny", version="1", rpc="Predict", code="OK") == before + 1
    assert requests_counted(plane, protocol="ats.v1", rpc="Predict", code="OK") >= 1
    timed = plane.metrics.request_seconds.labels(model="tiny", protocol="ats.v1", rpc="Predict")
    assert sum(b.get() for b in timed._buckets) >= 1


def test_model_ready_is_counted_and_unknown_names_are_not_found(plane):
    ready = Endpoint("oip.grpc", "ModelReady")
    assert plane.model_ready(ready, "tiny") and plane.model_ready(ready, "tiny", 1)
    with pytest.raises(errors.NotFound):
        plane.model_ready(ready, "nope")
    with pytest.raises(errors.NotFound):
        plane.model_ready(ready, "tiny", 9)
    assert requests_counted(plane, protocol="oip.grpc", rpc="ModelReady", code="OK") == 2
    assert requests_counted(plane, model="", protocol="oip.grpc", rpc="ModelReady", code="NOT_FOUND") == 1
    assert requests_counted(plane, model="tiny", version="", rpc="ModelReady", code="NOT_FOUND") == 1


def test_an_endpoint_names_a_known_protocol():
    with pytest.raises(ValueError):
        Endpoint("rest", "ModelInfer")


@pytest.mark.parametrize(
    ("read", "error", "code"),
    [
        (lambda: pixels_call("nope"), errors.NotFound, "NOT_FOUND"),
        (lambda: pixels_call(version=7), errors.NotFound, "NOT_FOUND"),
        (
            lambda: pixels_call(options=PredictOptions(n_patches=10_000)),
            errors.InvalidInput,
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_refusals_are_counted_with_their_code(plane, loop, read, error, code):
    before = requests_counted(plane, rpc="Predict", code=code)
    with pytest.raises(error):
        predict(plane, loop, read)
    assert requests_counted(plane, rpc="Predict", code=code) == before + 1


def test_a_conversion_error_of_the_front_end_is_counted_too(plane, loop):
    async def read() -> PredictCall:
        raise errors.InvalidInput("the first message of a stream must be its header", field="header")

    before = requests_counted(plane, rpc="PredictStream", code="INVALID_ARGUMENT")
    with pytest.raises(errors.InvalidInput):
        loop.run_until_complete(plane.predict(PREDICT_STREAM, read, FakeCall()))
    assert requests_counted(plane, rpc="PredictStream", code="INVALID_ARGUMENT") == before + 1


def test_an_unexpected_failure_is_internal_and_logged_not_leaked(plane, loop, caplog):
    def read() -> PredictCall:
        raise KeyError("/secret/server/path")

    with pytest.raises(InternalError) as info:
        predict(plane, loop, read)
    assert "secret" not in info.value.message and "server log" in info.value.message
    assert "/secret/server/path" in caplog.text
    assert requests_counted(plane, rpc="Predict", code="INTERNAL") >= 1


def test_a_request_whose_deadline_passed_does_not_start(plane, loop):
    before = requests_counted(plane, rpc="Predict", code="DEADLINE_EXCEEDED")
    stages = plane.metrics.stage_seconds.labels("tiny", "decode")._sum.get()
    with pytest.raises(errors.DeadlineExceeded):
        predict(plane, loop, pixels_call, FakeCall(remaining=0.0))
    assert requests_counted(plane, rpc="Predict", code="DEADLINE_EXCEEDED") == before + 1
    assert plane.metrics.stage_seconds.labels("tiny", "decode")._sum.get() == stages


def test_a_cancelled_call_is_counted_cancelled_and_frees_its_upload(plane, loop):
    started = asyncio.Event()

    async def stalled(upload: Upload) -> RawTensor:
        upload.hold(1000)
        started.set()
        await asyncio.Event().wait()  # never arrives
        raise AssertionError("unreachable")

    async def read() -> PredictCall:
        return PredictCall("", 0, PredictOptions(), stalled)

    async def cancel_it() -> None:
        task = asyncio.ensure_future(plane.predict(PREDICT_STREAM, read, FakeCall()))
        await started.wait()
        assert plane.uploads.bytes_held == 1000
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    before = requests_counted(plane, rpc="PredictStream", code="CANCELLED")
    loop.run_until_complete(cancel_it())
    assert requests_counted(plane, rpc="PredictStream", code="CANCELLED") == before + 1
    assert plane.uploads.bytes_held == 0


def test_admission_refuses_after_the_queue_timeout(loop):
    admission = Admission(1, queue_timeout=0.05)
    entered = []

    async def scenario() -> None:
        async with admission.slot(None):
            for remaining, waited in ((None, "0.05"), (0.0, "0.00")):  # the caller's time bounds the wait
                with pytest.raises(errors.AtCapacity, match=f"busy for {waited} s"):
                    async with admission.slot(remaining):
                        entered.append("while busy")
        async with admission.slot(None):  # released again
            entered.append("after")

    loop.run_until_complete(scenario())
    assert entered == ["after"]


def test_metadata_uses_the_registry_default_rule(plane):
    name, versions = plane.model_versions(GET_MODEL_METADATA, "")
    assert name == "tiny" and [v.version for v in versions] == [1]
    with pytest.raises(errors.NotFound):
        plane.model_versions(GET_MODEL_METADATA, "other")
    assert requests_counted(plane, model="", rpc="GetModelMetadata", code="NOT_FOUND") == 1


def test_unknown_model_names_share_one_label(plane, loop):
    """Client text never becomes a label value: a thousand probes, one series."""
    for i in range(1000):
        with pytest.raises(errors.NotFound):
            predict(plane, loop, lambda i=i: pixels_call(f"probe-{i}"))
    models = {
        sample.labels["model"]
        for family in plane.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "ats_requests_total"
    }
    assert models == {"", "tiny"}


def _error_classes() -> list[type[errors.ServiceError]]:
    found, stack = [], [errors.ServiceError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


def test_every_code_and_error_class_maps_to_a_grpc_status():
    assert set(status.GRPC_CODES) == set(errors.Code)
    for code, grpc_code in status.GRPC_CODES.items():
        assert grpc_code.name == code.value
    for cls in _error_classes():
        assert cls.code in status.GRPC_CODES, cls


def test_a_status_carries_the_code_message_and_field():
    converted = status.to_status(errors.TooLarge("too big", field="tensor.shape"))
    assert converted.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert converted.details == "too big"
    ((key, value),) = converted.trailing_metadata
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(value)
    violation = error_details_pb2.BadRequest()
    decoded.details[0].Unpack(violation)
    assert [(v.field, v.description) for v in violation.field_violations] == [("tensor.shape", "too big")]
