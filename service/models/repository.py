"""The model repository: finds ``<root>/<name>/<version>/`` directories, loads
and warms up new versions, unloads removed ones, and answers which loaded
version serves a request.

Requests hold a reference to the version they started on, so removing a
version never breaks a request in flight: the version leaves the registry and
its memory goes once the last such request ends.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterable

from model_ops.export import METADATA_FILE, version_dirs
from service.errors import InvalidInput, NotFound, Unavailable, clip
from service.models.servable import ServableModel, load_servable

log = logging.getLogger(__name__)


class State(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


# (path relative to the version directory, size, mtime_ns) of every file, sorted
Fingerprint = tuple[tuple[str, int, int], ...]

# A version is loaded once these are there (until then it is ignored, not FAILED).
REQUIRED_FILES = ("saved_model.pb", METADATA_FILE)

# An absolute path left in an error message once the repository root is cut
# away: a '/' that does not continue a word, a path or a URL scheme, then the
# characters up to a separator.
_ABSOLUTE_PATH = re.compile(r"(?<![\w./:-])/[^\s'\"`,;:()\[\]{}<>]+")


@dataclasses.dataclass
class VersionEntry:
    version: int
    path: pathlib.Path
    state: State
    fingerprint: Fingerprint  # the files the latest load attempt saw
    message: str = ""  # why it FAILED, with no absolute server path (callers see it)
    load_seconds: float = 0.0
    servable: ServableModel | None = None


def fingerprint(path: pathlib.Path) -> Fingerprint:
    """Every file under a version directory with its size and mtime: any file
    arriving, growing or being rewritten changes it, so a version that failed
    on half a copy (``cp -r`` writes ``variables/`` last) is retried once the
    copy completes, and one that is simply broken is not retried every poll."""
    files = []
    for folder, _, names in os.walk(path):
        for name in names:
            file = os.path.join(folder, name)
            try:
                stat = os.stat(file)
            except FileNotFoundError:
                continue  # removed while walking: the next scan sees a different set anyway
            files.append((os.path.relpath(file, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


def public_message(error: BaseException, root: pathlib.Path) -> str:
    """``error`` as any caller may read it (GetModelMetadata, ListModels): paths
    under the repository relative to its root, other absolute paths (the
    Python install, TensorFlow's files) cut to their last part, so the server's
    layout is not disclosed. The full text goes to the server log."""
    text = f"{type(error).__name__}: {error}"
    roots = {str(path) for path in (root.absolute(), root.resolve()) if path.parent != path}
    for prefix in sorted(roots, key=len, reverse=True):  # the longer first: one may contain the other
        text = text.replace(prefix + os.sep, "")
    return _ABSOLUTE_PATH.sub(lambda match: ".../" + match.group().rstrip("/").rsplit("/", 1)[-1], text)


def scan_repository(root: pathlib.Path) -> dict[str, dict[int, pathlib.Path]]:
    """Model name -> version -> directory, for every integer-named directory."""
    found: dict[str, dict[int, pathlib.Path]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = version_dirs(model_dir)
        if versions:
            found[model_dir.name] = versions
    return found


Listener = Callable[[str, int, State], None]


class ModelRegistry:
    """Loaded versions by model; thread-safe; one poller thread mutates it."""

    def __init__(
        self,
        root: pathlib.Path,
        default_model: str,
        warm_up: Callable[[ServableModel], None],
        listeners: Iterable[Listener] = (),
    ) -> None:
        self.root = root
        self._default_model = default_model
        self._warm_up = warm_up
        self._listeners = list(listeners)
        self._models: dict[str, dict[int, VersionEntry]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading side (request threads) ------------------------------------
    def default_model(self) -> str:
        """The configured default, else the only model; "" when ambiguous."""
        if self._default_model:
            return self._default_model
        with self._lock:
            names = list(self._models)
        return names[0] if len(names) == 1 else ""

    def snapshot(self) -> dict[str, list[VersionEntry]]:
        with self._lock:
            return {
                name: [dataclasses.replace(e) for _, e in sorted(versions.items())]
                for name, versions in self._models.items()
            }

    def any_ready(self) -> bool:
        with self._lock:
            return any(e.state is State.READY for v in self._models.values() for e in v.values())

    def model_name(self, name: str) -> str:
        """``name``, or the default model for an empty one (the one place that rule lives)."""
        if name:
            return name
        name = self.default_model()
        if not name:
            raise InvalidInput(
                "model_name is required: this server serves several models "
                f"({', '.join(self.snapshot())}) and has no default",
                field="model_name",
            )
        return name

    def versions(self, name: str) -> list[VersionEntry]:
        """Every version of model ``name`` (empty: the default), oldest first."""
        name = self.model_name(name)
        versions = self.snapshot().get(name)
        if versions is None:
            raise NotFound(f"model {clip(name)} is not in the repository", field="model_name")
        return versions

    def resolve(self, name: str, version: int) -> ServableModel:
        """The servable for a request; ``version`` 0 means the latest ready one."""
        name = self.model_name(name)
        with self._lock:
            versions = self._models.get(name)
            if versions is None:
                raise NotFound(f"model {clip(name)} is not in the repository", field="model_name")
            ready = {v: e.servable for v, e in versions.items() if e.state is State.READY and e.servable}
            if version == 0:
                if not ready:
                    raise Unavailable(f"model {name!r} has no ready version yet")
                return ready[max(ready)]
            if version not in ready:
                state = versions[version].state.value if version in versions else "absent"
                raise NotFound(
                    f"version {version} of model {name!r} is not available ({state}); "
                    f"ready: {sorted(ready) or 'none'}",
                    field="model_version",
                )
            return ready[version]

    # -- writing side (poller thread) --------------------------------------
    def poll_once(self) -> None:
        """Load what appeared or changed, unload what disappeared."""
        found = scan_repository(self.root)
        log.debug("scanned repository: %d model(s), %d version(s)", len(found), sum(map(len, found.values())))
        for name, versions in found.items():
            for version, path in sorted(versions.items()):
                self._maybe_load(name, version, path)
        with self._lock:
            gone = [
                (n, v) for n, versions in self._models.items() for v in versions if v not in found.get(n, {})
            ]
        for name, version in gone:
            self._unload(name, version)

    def start(self, interval: float) -> None:
        """Scan now and then every ``interval`` seconds (0: only now) in the background."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                except Exception:  # a bad scan must not end polling
                    log.exception("repository scan failed")
                if interval <= 0 or self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=loop, name="repository-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _set(self, name: str, entry: VersionEntry, state: State) -> None:
        with self._lock:
            entry.state = state
        for listener in self._listeners:
            listener(name, entry.version, state)

    def _maybe_load(self, name: str, version: int, path: pathlib.Path) -> None:
        with self._lock:
            entry = self._models.get(name, {}).get(version)
        if entry is not None and entry.state is not State.FAILED:
            return  # versions are immutable once served; replace by adding a new version
        if not all((path / required).is_file() for required in REQUIRED_FILES):
            return  # incomplete: wait for the copy
        # taken before loading, so files that change while the load fails still trigger a retry
        files = fingerprint(path)
        if entry is not None and entry.fingerprint == files:
            return  # already failed with these very files
        entry = VersionEntry(version=version, path=path, state=State.LOADING, fingerprint=files)
        with self._lock:
            self._models.setdefault(name, {})[version] = entry
        self._set(name, entry, State.LOADING)
        log.info("loading model %s version %d from %s", name, version, path)
        started = time.perf_counter()
        try:
            servable = load_servable(name, version, path)
            self._warm_up(servable)
        except Exception as err:
            entry.message = public_message(err, self.root)
            log.error(
                "model %s version %d failed to load (retried when its files change): %s: %s",
                name,
                version,
                type(err).__name__,
                err,
                exc_info=True,
            )
            self._set(name, entry, State.FAILED)
            return
        entry.load_seconds = time.perf_counter() - started
        entry.servable = servable
        log.info("model %s version %d ready in %.2f s", name, version, entry.load_seconds)
        self._set(name, entry, State.READY)

    def _unload(self, name: str, version: int) -> None:
        with self._lock:
            entry = self._models[name][version]
        self._set(name, entry, State.UNLOADING)
        with self._lock:
            del self._models[name][version]
            if not self._models[name]:
                del self._models[name]
        log.info("model %s version %d unloaded (its directory is gone)", name, version)
