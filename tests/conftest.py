"""Shared fixtures: a tiny exported model, a model repository holding it, and
real ``ats-serve`` processes on free loopback ports."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_MODEL = "tiny"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def export_tiny(version_dir: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Export the tiny random-weight RGB model to ``version_dir`` (models/README.md layout)."""
    from model_ops.export import export_tiny_model

    export_tiny_model(version_dir, name=TINY_MODEL, channels=3, seed=seed)
    return version_dir


def encode_image(pixels: np.ndarray, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def random_image(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Noise with a bright square, so attention and JPEG both have something to do."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 64, size=(height, width, channels), dtype=np.uint8)
    pixels[height // 3 : height // 3 + 24, width // 2 : width // 2 + 24] = 255
    return pixels


def scrape(metrics_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@pytest.fixture(scope="session")
def helpers() -> types.SimpleNamespace:
    """The helper functions above, for test modules (which cannot import conftest)."""
    return types.SimpleNamespace(
        encode=encode_image, random_image=random_image, scrape=scrape, metric=metric, free_port=free_port
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One exported tiny model version, to copy into repositories."""
    return export_tiny(tmp_path_factory.mktemp("tiny-export") / "1")


@pytest.fixture()
def make_repository(tmp_path: pathlib.Path, tiny_model_dir: pathlib.Path) -> Callable[..., pathlib.Path]:
    """Builds a repository ``<tmp>/repo/tiny/<v>/`` with copies of the tiny model."""

    def make(versions: tuple[int, ...] = (1,)) -> pathlib.Path:
        root = tmp_path / "repo"
        for version in versions:
            shutil.copytree(tiny_model_dir, root / TINY_MODEL / str(version))
        return root

    return make


class ServerProcess:
    """``ats-serve`` in a subprocess on loopback, logging to a file."""

    def __init__(
        self,
        repository: pathlib.Path | None,
        log_path: pathlib.Path,
        *flags: str,
        env: dict[str, str] | None = None,
    ) -> None:
        """``repository`` None: the server's default (the shipped models/)."""
        self.port, self.metrics_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = log_path
        command = [
            sys.executable,
            "-m",
            "service.server.main",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            *(["--model-repository", str(repository)] if repository is not None else []),
            *flags,
        ]
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, timeout: float = 180.0) -> None:
        """Block until overall health is SERVING (a model is loaded and warm)."""
        from ats_client import AtsClient, AtsError

        deadline = time.monotonic() + timeout
        with AtsClient(self.target, retries=0, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if client.health() == "SERVING":
                        return
                except AtsError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture()
def start_server(tmp_path: pathlib.Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server(repository, *flags)`` -> a SERVING server, killed at teardown."""
    started: list[ServerProcess] = []

    def start(
        repository: pathlib.Path | None, *flags: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> ServerProcess:
        server = ServerProcess(
            repository, tmp_path / f"server-{len(started)}.log", "--drain-delay", "0", *flags, env=env
        )
        started.append(server)
        if wait:
            server.wait_serving()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def ats_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path
) -> Iterator[ServerProcess]:
    """One server shared by the read-only tests: the tiny model, 16 MiB image
    limit and 40 MP pixel limit (so the limit tests stay cheap)."""
    root = tmp_path_factory.mktemp("shared-repo")
    shutil.copytree(tiny_model_dir, root / TINY_MODEL / "1")
    server = ServerProcess(
        root,
        root.parent / "shared-server.log",
        "--drain-delay",
        "0",
        "--max-image-bytes",
        str(16 << 20),
        "--max-image-pixels",
        str(40_000_000),
    )
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()
