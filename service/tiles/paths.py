"""Confinement of tile references to the server's data root.

A reference is a client-supplied path, so it is hostile until proven
otherwise: it is resolved (symlinks included) and must land inside the root,
and the file actually opened is checked again through its descriptor, so a
path swapped between the check and the open cannot slip a device, a FIFO or
a file outside the root past the check.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat

from service.errors import InvalidInput, NotFound, PermissionDenied, Unsupported, clip

FIELD = "tile.path"  # the request field every refusal of a reference points at
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclasses.dataclass(frozen=True)
class ConfinedFile:
    """An open regular file under the root."""

    fd: int
    real_path: str  # resolved path (for readers that need a name, e.g. OpenSlide)
    identity: tuple[int, int, int, int]  # device, inode, mtime, size: changes when the file does

    @property
    def size(self) -> int:
        return self.identity[3]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _resolve(root: str, reference: str) -> str:
    """The real path ``reference`` names, refused unless it lies under ``root``."""
    if not reference:
        raise InvalidInput("tile.path is empty", field=FIELD)
    if "\0" in reference:
        raise InvalidInput("tile.path contains a NUL byte", field=FIELD)
    if _URL.match(reference):
        raise Unsupported(
            "remote tile references (URLs) are not supported by this server; "
            "reference a file under its data root",
            field=FIELD,
        )
    if ".." in reference.replace("\\", "/").split("/"):
        raise PermissionDenied("tile.path may not contain '..'", field=FIELD)
    real = os.path.realpath(os.path.join(root, reference))
    if not _inside(real, root):
        raise PermissionDenied("tile.path resolves outside the server's data root", field=FIELD)
    return real


def _kind_error(mode: int) -> Exception | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return InvalidInput("tile.path is a directory, not an image file", field=FIELD)
    return PermissionDenied("tile.path is not a regular file (device, FIFO or socket)", field=FIELD)


def open_confined(root: str, reference: str) -> ConfinedFile:
    """Open ``reference`` (relative to ``root``, or absolute inside it) for reading.

    ``root`` must already be a resolved path (see ``resolve_root``).
    """
    real = _resolve(root, reference)
    try:
        error = _kind_error(os.stat(real).st_mode)
    except FileNotFoundError:
        raise NotFound(f"no file {clip(reference)} under the data root", field=FIELD) from None
    except OSError as err:
        raise PermissionDenied(f"cannot access {clip(reference)}: {err.strerror}", field=FIELD) from None
    if error is not None:
        raise error
    try:  # O_NONBLOCK: a FIFO swapped in after the check must not block the open
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise NotFound(f"no file {clip(reference)} under the data root", field=FIELD) from None
    except OSError as err:
        raise PermissionDenied(f"cannot open {clip(reference)}: {err.strerror}", field=FIELD) from None
    info = os.fstat(fd)
    error = _kind_error(info.st_mode)
    if error is not None:
        os.close(fd)
        raise error
    return ConfinedFile(fd, real, (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))


def resolve_root(data_root: str) -> str:
    """The resolved data root; raises ValueError at start-up if it is unusable."""
    real = os.path.realpath(data_root)
    if not os.path.isdir(real):
        raise ValueError(f"data root {data_root!r} is not a directory")
    return real
