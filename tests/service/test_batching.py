"""Dynamic batching in process: a request gets the same answer alone or in
any batch, the queue obeys its size, groups what can share a call, drops a
request whose caller left, and gives each request its batch's failure."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest

from service.batching import Batcher, BatchSettings
from service.errors import Cancelled, InvalidInput
from service.models.servable import load_servable
from service.pipeline import runner, sources
from service.pipeline.payload import RawTensor
from tests.support import random_image

LIMITS = sources.SourceLimits(max_image_pixels=40_000_000, max_image_bytes=64 << 20)


@pytest.fixture(scope="module")
def servable(tiny_model_dir):
    return load_servable("tiny", 1, tiny_model_dir)


def tensor(pixels: np.ndarray) -> RawTensor:
    return RawTensor(shape=pixels.shape, dtype="uint8", data=pixels.tobytes())


class Recorder:
    """The sizes of the graph calls a batcher reports."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, model: str, size: int) -> None:
        self.batches.append(size)


def predict_together(servable, batcher, images, seeds, **options):
    """One thread per image, started together, as concurrent requests are."""
    registry = sources.SourceRegistry(LIMITS)
    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        futures = [
            pool.submit(
                runner.run,
                servable,
                tensor(image),
                runner.PredictOptions(seed=seed, **options),
                registry,
                batcher=batcher,
            )
            for image, seed in zip(images, seeds, strict=True)
        ]
        return [f.result() for f in futures]


def test_each_request_gets_its_answer_alone_in_any_batch(servable):
    images = [random_image(96, 80, seed=i) for i in range(6)]
    seeds = [11, 12, 13, 11, 12, 13]
    alone = [
        runner.run(servable, tensor(im), runner.PredictOptions(seed=s), sources.SourceRegistry(LIMITS))
        for im, s in zip(images, seeds, strict=True)
    ]
    recorder = Recorder()
    batcher = Batcher(BatchSettings(max_size=8, timeout=0.5, threads=1), recorder)
    try:
        together = predict_together(servable, batcher, images, seeds)
    finally:
        batcher.close()
    assert max(recorder.batches) > 1 and sum(recorder.batches) == 6
    for one, batched in zip(alone, together, strict=True):
        np.testing.assert_array_equal(one.cells, batched.cells)
        np.testing.assert_array_equal(one.offsets, batched.offsets)
        np.testing.assert_allclose(one.probabilities, batched.probabilities, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(one.attention, batched.attention, rtol=1e-5, atol=1e-9)
        assert batched.timings["queue"] >= 0 and "features" in batched.timings


def test_batches_never_exceed_the_maximum_size(servable):
    recorder = Recorder()
    batcher = Batcher(BatchSettings(max_size=2, timeout=0.2, threads=1), recorder)
    try:
        predict_together(servable, batcher, [random_image(64, 64, seed=i) for i in range(5)], range(5))
    finally:
        batcher.close()
    assert sum(recorder.batches) == 5 and max(recorder.batches) == 2


def test_images_that_cannot_share_a_call_run_in_their_own_groups(servable):
    """Two shapes and two sampling modes arrive together: four graph calls,
    each image answered as if alone."""
    images = [random_image(64 + 32 * (i % 2), 64, seed=i) for i in range(4)]
    modes = ["sample", "sample", "top_k", "top_k"]
    recorder = Recorder()
    batcher = Batcher(BatchSettings(max_size=8, timeout=0.5, threads=1), recorder)
    registry = sources.SourceRegistry(LIMITS)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(
                    runner.run,
                    servable,
                    tensor(im),
                    runner.PredictOptions(seed=3, mode=mode),
                    registry,
                    batcher=batcher,
                )
                for im, mode in zip(images, modes, strict=True)
            ]
            together = [f.result() for f in futures]
    finally:
        batcher.close()
    assert sorted(recorder.batches) == [1, 1, 1, 1]
    for im, mode, batched in zip(images, modes, together, strict=True):
        alone = runner.run(servable, tensor(im), runner.PredictOptions(seed=3, mode=mode), registry)
        np.testing.assert_array_equal(alone.cells, batched.cells)


def test_a_request_whose_caller_left_is_dropped_from_the_queue(servable):
    """The batch waits a long time for company; the caller leaves after 50 ms
    and is answered CANCELLED at once, and the batch never runs its image."""
    recorder = Recorder()
    batcher = Batcher(BatchSettings(max_size=8, timeout=30.0, threads=1), recorder)
    left = threading.Event()
    threading.Timer(0.05, left.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled, match="queued for a batch"):
            runner.run(
                servable,
                tensor(random_image(64, 64)),
                runner.PredictOptions(seed=1),
                sources.SourceRegistry(LIMITS),
                lambda: not left.is_set(),
                batcher=batcher,
            )
        assert time.monotonic() - started < 25  # not held until the batch timeout
    finally:
        batcher.close()
    assert recorder.batches == []


def test_each_request_of_a_failed_batch_gets_the_failure(servable):
    """More patches than a small image's attention cells: every request of
    the group is refused as the client's error, and the batcher goes on."""
    recorder = Recorder()
    batcher = Batcher(BatchSettings(max_size=8, timeout=0.2, threads=1), recorder)
    image = random_image(32, 32)  # a 4x4 map: 16 cells
    try:
        with pytest.raises(InvalidInput, match="n_patches=20 exceeds the 16 attention cells"):
            predict_together(servable, batcher, [image, image], [1, 2], n_patches=20)
        ok = predict_together(servable, batcher, [image], [1])
    finally:
        batcher.close()
    assert recorder.batches == [1] and ok[0].probabilities.shape == (10,)


def test_closing_runs_what_is_queued_and_refuses_new_requests(servable):
    batcher = Batcher(BatchSettings(max_size=8, timeout=0.3, threads=1))
    registry = sources.SourceRegistry(LIMITS)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queued = pool.submit(
            runner.run,
            servable,
            tensor(random_image(64, 64)),
            runner.PredictOptions(seed=1),
            registry,
            batcher=batcher,
        )
        time.sleep(0.05)
        batcher.close()
        assert queued.result().probabilities.shape == (10,)
    with pytest.raises(Cancelled, match="stopping"):
        runner.run(
            servable,
            tensor(random_image(64, 64)),
            runner.PredictOptions(seed=1),
            registry,
            batcher=batcher,
        )
