"""The repository retries a FAILED version when any of its files change (a
naive ``cp -r`` writes ``variables/`` after the model files), never on an
unchanged one, and FAILED versions' messages name no absolute server path.

Real SavedModels (copies of the tiny exported model), in process through
``ModelRegistry.poll_once`` where each poll must be exact, and through a real
``ats-serve`` where callers must see it."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
from collections.abc import Callable

import pytest

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_client import AtsClient, AtsError
from bench.common import ServerProcess
from service.models.repository import ModelRegistry, State, public_message
from service.models.warmup import warm_up
from tests.support import TINY_MODEL, random_image, wait_for

LOADING_LINE = f"loading model {TINY_MODEL} version 1 "
SCAN_LINE = "scanned repository:"


def naive_copy_order(source: pathlib.Path) -> list[pathlib.Path]:
    """The version's files, relative, in the order that fails: every file but
    the variables first (the model files), the variables last."""
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    return sorted(files, key=lambda p: p.parts[0] == "variables")


def copy_file(source: pathlib.Path, destination: pathlib.Path, relative: pathlib.Path) -> None:
    """Like ``cp`` of one file: contents only, a fresh mtime."""
    (destination / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / relative, destination / relative)


def state_of(registry: ModelRegistry, version: int = 1) -> State | None:
    entries = {e.version: e for e in registry.snapshot().get(TINY_MODEL, [])}
    return entries[version].state if version in entries else None


def test_a_failed_version_is_retried_only_when_its_files_change(tmp_path, tiny_model_dir):
    attempts: list[int] = []
    registry = ModelRegistry(
        tmp_path,
        "",
        warm_up,
        [lambda name, version, state: attempts.append(version) if state is State.LOADING else None],
    )
    target = tmp_path / TINY_MODEL / "1"
    files = naive_copy_order(tiny_model_dir)
    variables = [f for f in files if f.parts[0] == "variables"]
    assert len(variables) == 2 and files[-2:] == variables

    target.mkdir(parents=True)
    copy_file(tiny_model_dir, target, pathlib.Path("ats_model.json"))
    registry.poll_once()
    assert (state_of(registry), attempts) == (None, [])  # no saved_model.pb yet: ignored, not FAILED

    for relative in files[:-2]:
        copy_file(tiny_model_dir, target, relative)
    registry.poll_once()
    assert (state_of(registry), attempts) == (State.FAILED, [1])
    for _ in range(3):  # unchanged files: not loaded again
        registry.poll_once()
    assert (state_of(registry), attempts) == (State.FAILED, [1])

    copy_file(tiny_model_dir, target, variables[0])
    registry.poll_once()
    assert (state_of(registry), attempts) == (State.FAILED, [1, 1])  # a new file: retried, still half

    copy_file(tiny_model_dir, target, variables[1])
    registry.poll_once()
    assert (state_of(registry), attempts) == (State.READY, [1, 1, 1])
    assert registry.resolve(TINY_MODEL, 1).version == 1

    # a ready version is never reloaded, even when its files change
    (target / "ats_model.json").write_text((target / "ats_model.json").read_text() + "\n")
    registry.poll_once()
    assert (state_of(registry), attempts) == (State.READY, [1, 1, 1])


def versions_seen(server: ServerProcess, client: AtsClient) -> list[tuple[int, int]]:
    """(version, state) of the tiny model as callers see them; fails at once if the server died."""
    assert server.process.poll() is None, server.log()[-3000:]
    try:
        return [(v.version, v.state) for v in client.metadata(TINY_MODEL).versions]
    except AtsError:
        return []  # not listening yet, or no version found yet


def test_a_naive_copy_becomes_ready_without_a_restart(start_server, tmp_path, tiny_model_dir):
    repo = tmp_path / "repo"
    repo.mkdir()
    server = start_server(repo, "--poll-interval", "0.1", "--log-level", "DEBUG", wait=False)
    target = repo / TINY_MODEL / "1"
    files = naive_copy_order(tiny_model_dir)
    model_files = [f for f in files if f.parts[0] != "variables"]
    with AtsClient(server.target, retries=0, timeout=10) as client:
        wait_for(lambda: server.log().count(SCAN_LINE) >= 2, what="the poller scanning")
        for relative in model_files:
            copy_file(tiny_model_dir, target, relative)
        wait_for(lambda: versions_seen(server, client) == [(1, pb.ModelVersionStatus.FAILED)], what="FAILED")
        assert "variables" in client.metadata(TINY_MODEL).versions[0].message

        # the same files, many polls: no new attempt
        scans = server.log().count(SCAN_LINE)
        wait_for(lambda: server.log().count(SCAN_LINE) >= scans + 10, what="ten more scans")
        assert server.log().count(LOADING_LINE) == 1
        assert versions_seen(server, client) == [(1, pb.ModelVersionStatus.FAILED)]

        for relative in files[len(model_files) :]:
            copy_file(tiny_model_dir, target, relative)
        wait_for(lambda: versions_seen(server, client) == [(1, pb.ModelVersionStatus.READY)], what="READY")
        assert client.predict(random_image(96, 96), n_patches=2).model_version == 1
        assert client.health(TINY_MODEL) == "SERVING"
    assert server.log().count(LOADING_LINE) >= 2


def drop_variables(version: pathlib.Path) -> None:
    shutil.rmtree(version / "variables")


def edit_metadata(**changes: object) -> Callable[[pathlib.Path], None]:
    """Rewrites ats_model.json with ``changes`` (a None value removes the key)."""

    def edit(version: pathlib.Path) -> None:
        path = version / "ats_model.json"
        metadata = {**json.loads(path.read_text()), **changes}
        path.write_text(json.dumps({k: v for k, v in metadata.items() if k not in changes or v is not None}))

    return edit


def write(relative: str, data: bytes) -> Callable[[pathlib.Path], None]:
    return lambda version: (version / relative).write_bytes(data)


# version -> (how it is broken, what its message must still say)
BROKEN: dict[int, tuple[Callable[[pathlib.Path], None], tuple[str, ...]]] = {
    1: (drop_variables, ("tiny/1/variables/variables", "Failed to find any matching files")),
    2: (write("ats_model.json", b"{not json"), ("JSONDecodeError",)),
    3: (edit_metadata(op_library_version="9.0.0"), ("needs op library 9.0.0",)),
    4: (write("saved_model.pb", b"not a SavedModel"), ("tiny/4/saved_model.pb", "Cannot parse")),
    5: (edit_metadata(classes=None), ("tiny/5/ats_model.json: missing keys ['classes']",)),
    6: (write("variables/variables.index", b"garbage"), ("sstable",)),
}


def absolute_paths(message: str, root: pathlib.Path) -> list[str]:
    """What in ``message`` discloses a server path: the repository root (as
    given or resolved) and any token starting with '/' (after quotes and brackets)."""
    tokens = re.split(r"[\s'\"`(\[{=,]+", message)
    roots = [r for r in {str(root), str(root.resolve())} if r in message]
    return roots + [t for t in tokens if t.startswith("/")]


def test_failed_messages_name_no_server_path(start_server, tmp_path, tiny_model_dir):
    repo = tmp_path / "repo"
    for version, (damage, _) in BROKEN.items():
        shutil.copytree(tiny_model_dir, repo / TINY_MODEL / str(version))
        damage(repo / TINY_MODEL / str(version))
    server = start_server(repo, "--poll-interval", "0", wait=False)
    failed = [(v, pb.ModelVersionStatus.FAILED) for v in BROKEN]
    with AtsClient(server.target, retries=0, timeout=10) as client:
        wait_for(lambda: versions_seen(server, client) == failed, what="every version FAILED")
        through_metadata = {v.version: v.message for v in client.metadata(TINY_MODEL).versions}
        (listed,) = client.list_models().models
        through_list = {v.version: v.message for v in listed.versions}
    assert through_list == through_metadata
    for version, (_, says) in BROKEN.items():
        message = through_metadata[version]
        assert absolute_paths(message, repo) == [], (version, message)
        for words in says:
            assert words in message, (version, message)
    # the full detail stays in the server log
    assert f"{repo}/{TINY_MODEL}/1/variables/variables" in server.log()


@pytest.mark.parametrize(
    ("message", "found"),
    [
        ("at /usr/lib/python3/x.py line 3", ["/usr/lib/python3/x.py"]),
        ("b'/srv/m/1/saved_model.pb'", ["/srv/m/1/saved_model.pb"]),
        ("in (/opt/tf) and 1/8 or tiny/1/variables", ["/opt/tf)"]),
        ("{ROOT}/tiny/1: bad", ["{ROOT}", "{ROOT}/tiny/1:"]),
    ],
)
def test_the_path_check_sees_paths(message, found, tmp_path):
    """The check above can fail: it finds the paths it must find."""
    root = str(tmp_path)
    assert absolute_paths(message.replace("{ROOT}", root), tmp_path) == [
        f.replace("{ROOT}", root) for f in found
    ]


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (OSError("cannot parse {ROOT}/tiny/4/saved_model.pb"), "OSError: cannot parse tiny/4/saved_model.pb"),
        (
            ImportError("undefined symbol in '/usr/lib/python3/site-packages/tensorflow/libtf.so'"),
            "ImportError: undefined symbol in '.../libtf.so'",
        ),
        (
            RuntimeError("device '/job:localhost' (see https://x.org/a)"),
            "RuntimeError: device '.../job:localhost' (see https://x.org/a)",
        ),
        (ValueError("scale 1/8 of tiny/1"), "ValueError: scale 1/8 of tiny/1"),
    ],
)
def test_public_message_keeps_the_detail_but_no_absolute_path(error, shown, tmp_path):
    error.args = (error.args[0].replace("{ROOT}", str(tmp_path)),)
    assert public_message(error, tmp_path) == shown
