"""The memory budget and the deadline check, through a real server: a decode
is charged from the image header before any pixel is decoded, waits for
room or is refused, and is not started when the caller's deadline cannot be
met."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import struct
import zlib

import grpc
import numpy as np
import pytest

from ats_client import AtsClient, AtsError
from service.pipeline.decode import peak_bytes_per_pixel
from tests.support import encode_image, metric, scrape, wait_for


def pattern(height: int, width: int) -> bytes:
    """A PNG that is small on the wire and large decoded (a decompression amplifier)."""
    y, x = np.mgrid[0:height, 0:width]
    return encode_image(np.stack([x % 256, y % 256, (x ^ y) % 256], axis=-1).astype(np.uint8))


def flat_png(height: int, width: int) -> bytes:
    """A valid grey RGB PNG written chunk by chunk (Pillow takes minutes to
    compress 100 MP; zlib on identical rows takes a second)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(1)
    row = b"\x00" + b"\x80" * (3 * width)  # filter byte "none", then mid-grey pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_a_decode_larger_than_the_whole_budget_is_refused_before_decoding(start_server, make_repository):
    image = pattern(3000, 3000)  # 9 MP: about 126 MB at its peak, well over the budget
    server = start_server(make_repository(), "--memory-budget-bytes", str(50 << 20))
    with AtsClient(server.target, retries=0, timeout=30) as client:
        with pytest.raises(AtsError) as refused:
            client.predict(image, n_patches=2)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "whole memory budget" in refused.value.message
        samples = scrape(server.metrics_url)
        assert metric(samples, "ats_stage_seconds_count", stage="decode") == 0
        assert metric(samples, "ats_memory_reserved_bytes") == 0
        assert client.predict(pattern(256, 256), n_patches=2).label  # smaller ones still fit


def test_requests_that_do_not_fit_together_wait_for_each_other(start_server, make_repository):
    side = 1500
    need = side * side * peak_bytes_per_pixel("RGB", 3)
    server = start_server(
        make_repository(),
        "--memory-budget-bytes",
        str(int(need * 1.5)),  # room for one decode at a time
        "--queue-timeout",
        "60",
    )
    image = pattern(side, side)
    with (
        AtsClient(server.target, retries=0, timeout=120) as client,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        answers = list(pool.map(lambda _: client.predict(image, n_patches=2, seed=3).label, range(4)))
    assert len(set(answers)) == 1  # all four served, one at a time, the same answer
    samples = scrape(server.metrics_url)
    assert metric(samples, "ats_memory_reserved_bytes") == 0
    assert metric(samples, "ats_memory_budget_bytes") == int(need * 1.5)


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_a_decode_that_cannot_meet_the_deadline_does_not_start(start_server, make_repository):
    big = flat_png(12000, 12000)  # 144 MP: a decode of at least 0.14 s anywhere, about 3 s here
    server = start_server(make_repository())
    with AtsClient(server.target, retries=0) as client:
        full = time_decode(client, server.process.pid, flat_png(4000, 4000))
        before = cpu_seconds(server.process.pid)
        with pytest.raises(AtsError) as late:
            client.predict(big, n_patches=2, timeout=0.1)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(
            lambda: metric(scrape(server.metrics_url), "ats_requests_total", code="DEADLINE_EXCEEDED") == 1,
            timeout=30,
            what="the late request counted",
        )
        # the refused decode would have cost 9x the 16 MP one; it cost less than that one
        assert cpu_seconds(server.process.pid) - before < full
        assert metric(scrape(server.metrics_url), "ats_memory_reserved_bytes") == 0
        assert client.predict(pattern(128, 128), n_patches=2).label


def time_decode(client: AtsClient, pid: int, image: bytes) -> float:
    """Server CPU seconds of one completed prediction of ``image``."""
    before = cpu_seconds(pid)
    assert client.predict(image, n_patches=2, timeout=60).label
    return cpu_seconds(pid) - before
