"""Fixtures: a tiny exported model, model repositories holding it, and real
``ats-serve`` processes on free loopback ports. The helpers they use, and
that test modules import, are in tests/support.py."""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Callable, Iterator

import pytest

from bench.common import ServerProcess
from tests.support import TINY_MODEL


def export_tiny(version_dir: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Export the tiny random-weight RGB model to ``version_dir`` (models/README.md layout)."""
    from model_ops.export import export_tiny_model

    export_tiny_model(version_dir, name=TINY_MODEL, channels=3, seed=seed)
    return version_dir


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
