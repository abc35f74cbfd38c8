"""What the test modules share: free loopback ports and an ``ats-serve``
subprocess (from bench/common.py, the benchmarks' launcher), test images,
/metrics scrapes and a real Prometheus on loopback.

Test modules import from here (``from tests.support import ...``); the
fixtures built on these live in tests/conftest.py.
"""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench.common import free_port  # one copy, shared with the benchmarks

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_MODEL = "tiny"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def version_names(model: pathlib.Path) -> list[str]:
    """The version directories of a model in a repository, in numeric order."""
    from model_ops.export import version_dirs  # TensorFlow only for the tests that ask

    return [str(version) for version in version_dirs(model)]


def wait_for(condition: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    """Poll ``condition`` every 0.1 s until it holds; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(0.1)


# -- images --------------------------------------------------------------------
def encode_image(pixels: np.ndarray, image_format: str = "PNG", **options: object) -> bytes:
    """``pixels`` encoded by Pillow (PNG unless told), with Pillow's save options."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def random_image(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Noise with a bright square, so attention and JPEG both have something to do."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 64, size=(height, width, channels), dtype=np.uint8)
    pixels[height // 3 : height // 3 + 24, width // 2 : width // 2 + 24] = 255
    return pixels


# -- /metrics --------------------------------------------------------------------
def scrape(metrics_url: str) -> Samples:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


# -- Prometheus -------------------------------------------------------------------
class Prometheus:
    """The Debian ``prometheus`` on loopback, scraping one target every second,
    and queried over its HTTP API.

    ``job`` is the scrape job (default: one named ``ats``), for instance the
    compose stack's; its targets are replaced by ``target`` (``host:port``).
    """

    def __init__(self, workdir: pathlib.Path, target: str, job: dict | None = None) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus (Debian package prometheus) is missing: run bash .ci/setup.sh"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{**(job or {"job_name": "ats"}), "static_configs": [{"targets": [target]}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "prometheus.log"
        # prometheus writes to it until stop() closes it
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, (self.log_path, "prometheus exited")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready"
            time.sleep(0.2)

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant query: labels (without __name__) -> value; empty when no series."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
            for r in body["data"]["result"]
        }

    def value(self, promql: str) -> float | None:
        """The one value of an instant query (None when no series)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return next(iter(result.values()), None)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self._log.close()
