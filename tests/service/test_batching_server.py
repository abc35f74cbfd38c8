"""Batching through real servers: clients calling together share graph calls
(counted in ``ats_batch_size``) and get exactly the answers a server without
batching gives for the same images and seeds."""

from __future__ import annotations

import concurrent.futures

from ats_client import AtsClient
from tests.support import encode_image, metric, random_image, scrape

CLIENTS = 6


def predict_all(target: str, images: list[bytes]) -> list:
    """Every image at once, one client connection each, seed = its index."""

    def one(index: int):
        with AtsClient(target) as client:
            return client.predict(images[index], seed=index)

    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, range(len(images))))


def test_concurrent_requests_share_calls_and_keep_their_answers(start_server, make_repository):
    repository = make_repository()
    # a batch waits up to 300 ms for company, so the six calls meet
    batched = start_server(repository, "--batch-max-size", "8", "--batch-timeout-us", "300000")
    alone = start_server(repository, "--batch-max-size", "0")
    images = [encode_image(random_image(96, 112, seed=i)) for i in range(CLIENTS)]
    together = predict_all(batched.target, images)
    separate = predict_all(alone.target, images)
    for a, b in zip(together, separate, strict=True):
        assert a.label == b.label
        assert [(p.y, p.x) for p in a.patches] == [(p.y, p.x) for p in b.patches]
        for pa, pb in zip(a.probabilities, b.probabilities, strict=True):
            assert abs(pa.probability - pb.probability) < 1e-5
        assert "queue" in {t.stage for t in a.timings} and "queue" not in {t.stage for t in b.timings}
    samples = scrape(batched.metrics_url)
    calls = metric(samples, "ats_batch_size_count", model="tiny")
    assert metric(samples, "ats_batch_size_sum", model="tiny") == CLIENTS
    assert calls < CLIENTS  # at least two requests shared a call
    assert metric(samples, "ats_stage_seconds_count", model="tiny", stage="queue") == CLIENTS
    assert metric(scrape(alone.metrics_url), "ats_batch_size_count", model="tiny") == 0
