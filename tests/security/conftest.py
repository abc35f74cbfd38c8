"""Fixtures of the security tests: certificates made here by the
development-CA script, and real ats-serve processes on loopback with TLS and
tokens."""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.common import ServerProcess
from tests.security.support import Pki
from tests.support import TINY_MODEL


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA, with certificates and a token of its own: what another deployment holds."""
    return Pki.make(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``serve(*flags, client=AtsClient options)`` -> a SERVING ats-serve
    with the tiny model, killed when the module's tests are done."""
    started: list[ServerProcess] = []

    def start(*flags: str, client: dict[str, Any] | None = None) -> ServerProcess:
        root = tmp_path_factory.mktemp("repo")
        shutil.copytree(tiny_model_dir, root / TINY_MODEL / "1")
        server = ServerProcess(
            root, root.parent / f"{root.name}.log", "--drain-delay", "0", *flags, client=client
        )
        started.append(server)
        server.wait_serving()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def mutual_tls_server(serve: Callable[..., ServerProcess], pki: Pki) -> ServerProcess:
    """Mutual TLS and tokens (the hashed file the script writes), bound to every
    interface, metrics on loopback only: the secure deployment."""
    return serve(
        *pki.server_flags(),
        "--auth-tokens-file",
        pki.path("tokens.sha256"),
        "--host",
        "0.0.0.0",
        "--metrics-host",
        "127.0.0.1",
        client=pki.client(token=pki.token),
    )
