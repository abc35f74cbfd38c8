"""Free loopback ports and an ``ats-serve`` subprocess on them: the one
launcher of the benchmarks (bench_service.py, bench_tiles.py) and of the
tests (tests/support.py re-exports it; benchmarks never import tests)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A port free_port() found may be taken before the server binds it: the server
# then exits with this error and is started again on other ports.
PORT_TAKEN = "Address already in use"
PORT_RACE_RETRIES = 3


def load_dev_certs() -> ModuleType:
    """docker/make-dev-certs.py as a module (its file name is a command's, not a
    module's): the benchmarks and tests make their certificates with it."""
    spec = importlib.util.spec_from_file_location("make_dev_certs", ROOT / "docker" / "make-dev-certs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``ats-serve`` serving ``repository`` in a subprocess on loopback, logging to a file."""

    def __init__(
        self,
        repository: pathlib.Path | None,
        log_path: pathlib.Path,
        *flags: str,
        env: dict[str, str] | None = None,
        client: Mapping[str, Any] | None = None,
        cwd: pathlib.Path = ROOT,
    ) -> None:
        """``repository`` None: the server's default (the shipped models/).
        ``client``: the AtsClient options that reach it (TLS files, token), for
        the readiness wait and for whoever calls it (``client_options``).
        ``cwd``: where ``service`` is imported from first (another checkout's
        server, for a side-by-side benchmark)."""
        self.client_options = dict(client or {})
        self.log_path = log_path
        self._repository, self._flags, self._env, self._cwd = repository, flags, env, cwd
        self._launch()

    def _launch(self) -> None:
        """Start the server on free ports, picked afresh each time."""
        self.port, self.metrics_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.http_port = free_port()  # the OIP REST port (flags may turn it off)
        self.http_url = f"http://127.0.0.1:{self.http_port}"
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
            "--http-port",
            str(self.http_port),
            *(["--model-repository", str(self._repository)] if self._repository is not None else []),
            *self._flags,
        ]
        # the server writes to it until terminate() or kill() closes it
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            cwd=self._cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(self._env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, models: Sequence[str] = ("",), timeout: float = 300.0) -> None:
        """Block until the health of every one of ``models`` is SERVING ("" =
        the whole server: one model loaded and warm); killed if it never is."""
        from ats_client import AtsClient, AtsError

        deadline = time.monotonic() + timeout
        relaunches = PORT_RACE_RETRIES
        client = AtsClient(self.target, retries=0, timeout=2, **self.client_options)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    if not relaunches or PORT_TAKEN not in self.log():
                        raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                    # another process took a port between free_port() and the server's bind
                    relaunches -= 1
                    self._log.close()
                    self._launch()
                    client.close()
                    client = AtsClient(self.target, retries=0, timeout=2, **self.client_options)
                try:
                    if all(client.health(model) == "SERVING" for model in models):
                        return
                except AtsError:
                    pass  # not listening yet, or a model not loaded yet
                time.sleep(0.25)
        finally:
            client.close()
        self.kill()
        raise TimeoutError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (the server drains), then its exit code."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
