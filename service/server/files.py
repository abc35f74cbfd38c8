"""Secret files: who may read them, and noticing when they change.

Certificates, keys and token files are re-read when they change, so a
rotation needs no restart. Changes are noticed from ``stat`` (a few
microseconds), cheap enough to check on every connection or call, and they
follow symbolic links, so Kubernetes' atomic swap of a mounted Secret (its
``..data`` link) is seen as a change of every file at once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

FileStamp = tuple[int, int, int, int, int, int]
Stamp = tuple[FileStamp | None, ...]


class CredentialFileError(ValueError):
    """A certificate, key or token file that cannot be used: the message says why and what to do."""


def stamp(paths: Sequence[str]) -> Stamp:
    """What changes when any of ``paths`` is rewritten, replaced or re-permissioned (None: missing)."""
    stamps: list[FileStamp | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode, info.st_uid))
    return tuple(stamps)


def exposure(mode: int, owner: int, reader: int) -> str | None:
    """Why a secret file of ``mode`` owned by ``owner`` is too open for the
    process running as ``reader``, or None when it is private enough.

    Never readable by others. Readable by its group only when another user
    owns it: that is how a Kubernetes Secret volume (root-owned, shared with
    the pod's fsGroup) or a host file bind-mounted into a container reaches a
    non-root server. A file the server owns can be 0600, so a group bit there
    is a slip (a ``cp`` under umask 022), refused like PostgreSQL refuses it.
    """
    if mode & stat.S_IROTH:
        return f"is readable by every user (mode {stat.S_IMODE(mode):04o}): chmod o-rwx it"
    if mode & stat.S_IRGRP and owner == reader:
        return f"is readable by its group (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
    return None


def read(path: str, what: str) -> tuple[bytes, os.stat_result]:
    """The bytes of a file and the status of that very file (not of a later
    replacement), with an error naming the setting (``what``)."""
    try:
        with open(path, "rb") as file:
            return file.read(), os.fstat(file.fileno())
    except OSError as error:
        raise CredentialFileError(f"{what} {path}: {error.strerror}") from None


def check_private(path: str, what: str, info: os.stat_result, because: str = "") -> None:
    """Refuse a secret file that is too open (see :func:`exposure`)."""
    problem = exposure(info.st_mode, info.st_uid, os.geteuid())
    if problem:
        raise CredentialFileError(f"{what} {path} {because}{problem}")


def read_private(path: str, what: str) -> bytes:
    """The bytes of a secret file, refused when the file is too open."""
    data, info = read(path, what)
    check_private(path, what, info)
    return data


def read_public(path: str, what: str) -> bytes:
    """The bytes of a certificate or other non-secret file."""
    return read(path, what)[0]
