"""The data plane in process, without any protocol: it resolves, admits, runs
and counts every request exactly once, and its errors map to gRPC statuses
through one complete table."""

from __future__ import annotations

import shutil
import threading

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry

from service import errors
from service.admission import Admission
from service.dataplane import DataPlane, InternalError, PredictCall
from service.metrics import Metrics
from service.models.repository import ModelRegistry
from service.models.warmup import warm_up
from service.pipeline.payload import RawTensor
from service.pipeline.runner import PredictOptions
from service.pipeline.sources import SourceLimits, SourceRegistry
from service.server import status


class FakeCall:
    """A caller that is there (or gone) with some time left."""

    def __init__(self, active: bool = True, remaining: float | None = None) -> None:
        self.active, self.remaining = active, remaining

    def is_active(self) -> bool:
        return self.active

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.fixture(scope="module")
def plane(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("plane-repo")
    shutil.copytree(tiny_model_dir, root / "tiny" / "1")
    models = ModelRegistry(root, "", warm_up)
    models.poll_once()
    sources = SourceRegistry(SourceLimits(max_image_pixels=10_000_000, max_image_bytes=64 << 20))
    return DataPlane(models, sources, Metrics(CollectorRegistry()), Admission(2, 0.2))


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
    return PredictCall(model, version, options or PredictOptions(seed=1), lambda: tensor)


def test_a_prediction_is_resolved_run_and_counted_once(plane):
    before = requests_counted(plane, model="tiny", version="1", rpc="Predict", code="OK")
    served = plane.predict("Predict", pixels_call, FakeCall())
    assert served.model.name == "tiny" and served.model.version == 1
    assert served.prediction.probabilities.shape == (10,)
    assert requests_counted(plane, model="tiny", version="1", rpc="Predict", code="OK") == before + 1


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
def test_refusals_are_counted_with_their_code(plane, read, error, code):
    before = requests_counted(plane, rpc="Predict", code=code)
    with pytest.raises(error):
        plane.predict("Predict", read, FakeCall())
    assert requests_counted(plane, rpc="Predict", code=code) == before + 1


def test_a_conversion_error_of_the_front_end_is_counted_too(plane):
    def read() -> PredictCall:
        raise errors.InvalidInput("the first message of a stream must be its header", field="header")

    before = requests_counted(plane, rpc="PredictStream", code="INVALID_ARGUMENT")
    with pytest.raises(errors.InvalidInput):
        plane.predict("PredictStream", read, FakeCall())
    assert requests_counted(plane, rpc="PredictStream", code="INVALID_ARGUMENT") == before + 1


def test_an_unexpected_failure_is_internal_and_logged_not_leaked(plane, caplog):
    def read() -> PredictCall:
        raise KeyError("/secret/server/path")

    with pytest.raises(InternalError) as info:
        plane.predict("Predict", read, FakeCall())
    assert "secret" not in info.value.message and "server log" in info.value.message
    assert "/secret/server/path" in caplog.text
    assert requests_counted(plane, rpc="Predict", code="INTERNAL") >= 1


@pytest.mark.parametrize(
    ("remaining", "error", "code"),
    [(None, errors.Cancelled, "CANCELLED"), (0.0, errors.DeadlineExceeded, "DEADLINE_EXCEEDED")],
)
def test_a_gone_caller_turns_the_error_into_its_own_without_mutating_it(plane, remaining, error, code):
    before = requests_counted(plane, rpc="Predict", code=code)
    with pytest.raises(error) as info:
        plane.predict("Predict", pixels_call, FakeCall(active=False, remaining=remaining))
    assert isinstance(info.value.__cause__, errors.Cancelled)  # the stage check's own error
    assert info.value.__cause__.code is errors.Code.CANCELLED
    assert requests_counted(plane, rpc="Predict", code=code) == before + 1


def test_admission_refuses_after_the_queue_timeout(plane):
    admission = Admission(1, queue_timeout=0.05)
    entered = threading.Event()
    with admission.slot(None):
        for remaining, waited in ((None, "0.05"), (0.0, "0.00")):  # the caller's time bounds the wait
            with pytest.raises(errors.AtCapacity, match=f"busy for {waited} s"), admission.slot(remaining):
                entered.set()
    assert not entered.is_set()
    with admission.slot(None):  # released again
        entered.set()
    assert entered.is_set()


def test_metadata_uses_the_registry_default_rule(plane):
    name, versions = plane.model_versions("GetModelMetadata", "")
    assert name == "tiny" and [v.version for v in versions] == [1]
    with pytest.raises(errors.NotFound):
        plane.model_versions("GetModelMetadata", "other")
    assert requests_counted(plane, model="", rpc="GetModelMetadata", code="NOT_FOUND") == 1


def test_unknown_model_names_share_one_label(plane):
    """Client text never becomes a label value: a thousand probes, one series."""
    for i in range(1000):
        with pytest.raises(errors.NotFound):
            plane.predict("Predict", lambda i=i: pixels_call(f"probe-{i}"), FakeCall())
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
