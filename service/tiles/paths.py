"""Confinement of tile references to the server's data root.

A reference is a client-supplied path, so it is hostile until proven
otherwise. The root is held open as a descriptor and every reference is
opened *relative to that descriptor* in one resolution that cannot leave it:
openat2(2) with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` (Linux 5.6+), or,
where the kernel lacks it, a walk that opens one component at a time with
``O_NOFOLLOW`` relative to its parent's descriptor and resolves symlinks
here. The check and the open are one operation, so a symlink or directory
swapped in mid-request cannot redirect it (checking a ``realpath`` and then
opening the name again could be raced). The opened descriptor is then
checked to be a regular file and is the only handle readers ever use.

Symlinks are followed while they stay beneath the root: relative ones, whose
``..`` never climb above it. Absolute symlinks are refused even when they
point inside (openat2 refuses them beneath a root, and the walk does the
same so both behave alike).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import platform
import re
import stat
import weakref

from service.errors import InvalidInput, NotFound, PermissionDenied, ServiceError, Unsupported, clip

FIELD = "tile.path"  # the request field every refusal of a reference points at
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused after fstat)
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_HOPS = 40  # symlinks followed (or components retried after a swap) per reference, as the kernel allows
_RESOLVE_NO_MAGICLINKS, _RESOLVE_BENEATH = 0x02, 0x08
_OPENAT2_SYSCALL = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
# Errors that say the server is short of resources, not that the reference is bad.
_SERVER_FAULTS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    """openat2(2) of ``path`` beneath ``dir_fd``, following only symlinks that stay beneath it."""
    assert _OPENAT2_SYSCALL is not None
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        ctypes.c_long(_OPENAT2_SYSCALL),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(fd)


def _openat2_works(dir_fd: int) -> bool:
    """Whether this kernel (and any seccomp filter in front of it) serves openat2."""
    if _OPENAT2_SYSCALL is None:
        return False
    try:
        os.close(_openat2(dir_fd, ".", _DIR_FLAGS))
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
            return False
        raise
    return True


def _components(path: str) -> collections.deque[str]:
    """Path components; a trailing slash leaves a final "." so that the last name must be a directory."""
    parts = collections.deque(part for part in path.split("/") if part)
    if path.endswith("/") and parts:
        parts.append(".")
    return parts


def _walk(root_fd: int, path: str) -> int:
    """Open ``path`` beneath ``root_fd`` without openat2, failing as openat2 would
    (EXDEV for a way out of the root).

    Every component is opened with O_NOFOLLOW relative to its parent's
    descriptor; a symlink is read through a descriptor of the link itself and
    its target walked in turn, ``..`` pops to a directory already held and
    never above the root. A component that changes kind between two steps
    (swapped) is looked up again, within the same budget as symlinks.
    """
    held: list[int] = []  # directories entered below the root, innermost last
    todo, hops = _components(path), 0
    try:
        while todo:
            name = todo.popleft()
            if name == ".":
                continue
            if name == "..":
                if not held:
                    raise OSError(errno.EXDEV, "leaves the data root")
                os.close(held.pop())
                continue
            parent, last = held[-1] if held else root_fd, not todo
            try:
                fd = os.open(name, (_FILE_FLAGS if last else _DIR_FLAGS) | os.O_NOFOLLOW, dir_fd=parent)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                hops += 1
                if hops > _MAX_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                link = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    mode = os.fstat(link).st_mode
                    target = os.readlink("", dir_fd=link) if stat.S_ISLNK(mode) else None
                finally:
                    os.close(link)
                if target is not None:
                    if target.startswith("/"):
                        raise OSError(errno.EXDEV, "absolute symlink") from None
                    todo.extendleft(reversed(_components(target)))
                elif last or stat.S_ISDIR(mode):
                    todo.appendleft(name)  # no longer the symlink the open met: look again
                else:
                    raise err  # a file where a directory is needed
                continue
            if last:
                return fd
            held.append(fd)
        # the path names a directory (the root itself, or below it): open it as one
        return os.open(".", _FILE_FLAGS, dir_fd=held[-1] if held else root_fd)
    finally:
        for fd in held:
            os.close(fd)


class ConfinedFile:
    """An open regular file under the root; owns its descriptor.

    ``close`` is idempotent and also runs when the object is collected, so no
    path, failing or not, can leak or double-close the descriptor.
    """

    def __init__(self, fd: int, info: os.stat_result) -> None:
        self.fd = fd
        # device, inode, mtime, size: changes when the file does
        self.identity = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        self.is_directory = stat.S_ISDIR(info.st_mode)  # a DICOM series: read by the entries it holds
        self._closer = weakref.finalize(self, os.close, fd)

    @property
    def size(self) -> int:
        return self.identity[3]

    @property
    def proc_path(self) -> str:
        """A name for libraries that open by name (OpenSlide): the kernel resolves
        it to this very descriptor's file, with no lookup under the root."""
        return f"/proc/self/fd/{self.fd}"

    @property
    def real_path(self) -> str:
        """The name the kernel holds for the opened file (selects slide readers by extension)."""
        return os.readlink(self.proc_path)

    def close(self) -> None:
        self._closer()


def _kind_error(mode: int, directories: bool) -> ServiceError | None:
    if stat.S_ISREG(mode) or (directories and stat.S_ISDIR(mode)):
        return None
    if stat.S_ISDIR(mode):
        return InvalidInput("tile.path is a directory, not an image file", field=FIELD)
    return PermissionDenied("tile.path is not a regular file (device, FIFO or socket)", field=FIELD)


def _refusal(err: OSError, reference: str) -> ServiceError:
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"no file {clip(reference)} under the data root", field=FIELD)
    if err.errno == errno.EXDEV:
        return PermissionDenied("tile.path resolves outside the server's data root", field=FIELD)
    return PermissionDenied(f"cannot open {clip(reference)}: {err.strerror}", field=FIELD)


def resolve_root(data_root: str) -> str:
    """The resolved data root; raises ValueError at start-up if it is unusable."""
    real = os.path.realpath(data_root)
    if not os.path.isdir(real):
        raise ValueError(f"data root {data_root!r} is not a directory")
    return real


class DataRoot:
    """The data root, held open as a descriptor that every reference is opened beneath.

    ``use_openat2=False`` forces the component walk (what kernels without
    openat2 get); by default openat2 is used where the kernel serves it.
    """

    def __init__(self, data_root: str, use_openat2: bool = True) -> None:
        self.path = resolve_root(data_root)
        fd = os.open(self.path, _DIR_FLAGS)
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        self.uses_openat2 = use_openat2 and _openat2_works(fd)
        # absolute references are accepted under the root as configured or as resolved
        self._prefixes = {self.path, os.path.abspath(data_root)}

    def _relative(self, reference: str) -> str:
        """``reference`` as a path relative to the root, after the checks on its text."""
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
        if not reference.startswith("/"):
            return reference
        for prefix in self._prefixes:
            if reference == prefix or reference.startswith(prefix.rstrip("/") + "/"):
                return reference[len(prefix) :].lstrip("/") or "."
        raise PermissionDenied("tile.path resolves outside the server's data root", field=FIELD)

    def _open_beneath(self, path: str) -> int:
        if self.uses_openat2:
            try:
                return _openat2(self.fd, path, _FILE_FLAGS)
            except OSError as err:
                # EAGAIN: a rename raced a ".." of a symlink; the walk cannot be raced that way
                if err.errno != errno.EAGAIN:
                    raise
        return _walk(self.fd, path)

    def open(self, reference: str, directories: bool = False) -> ConfinedFile:
        """Open ``reference`` (relative to the root, or absolute inside it) for reading;
        a directory only with ``directories`` (a DICOM series is one).

        Raises the documented ServiceError for every refusal, with nothing left open.
        """
        relative = self._relative(reference)
        try:
            fd = self._open_beneath(relative)
        except OSError as err:
            if err.errno in _SERVER_FAULTS:
                raise  # out of descriptors or memory: the server's fault, not the reference's
            raise _refusal(err, reference) from None
        try:
            info = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        error = _kind_error(info.st_mode, directories)
        if error is not None:
            os.close(fd)
            raise error
        return ConfinedFile(fd, info)
