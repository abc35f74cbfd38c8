"""Reading a confined file by descriptor: positioned reads that any number of
threads can issue at once, counted where a parser does the reading."""

from __future__ import annotations

import errno
import io
import os
from typing import TYPE_CHECKING

from service.errors import InvalidInput
from service.tiles.paths import FIELD, ConfinedFile
from service.tiles.stats import Recorder

if TYPE_CHECKING:
    from typing_extensions import Buffer


def pread_exact(file: ConfinedFile, count: int, offset: int) -> bytes:
    """``count`` bytes at ``offset`` (short reads retried). A range beyond the
    file's size (a forged offset or length) or a file truncated since it was
    opened raises InvalidInput, before any buffer is sized by the range."""
    if offset < 0 or count < 0 or offset + count > file.size:
        raise InvalidInput(
            f"corrupt file: {count} bytes at offset {offset} lie beyond its {file.size} bytes", field=FIELD
        )
    chunks, done = [], 0
    while done < count:
        chunk = os.pread(file.fd, count - done, offset + done)
        if not chunk:
            raise InvalidInput(f"file truncated: {count} bytes expected at offset {offset}", field=FIELD)
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


class CountingFile(io.RawIOBase):
    """A read-only file over a descriptor that counts the bytes it reads (what a
    parser reads of the structure). It never closes the descriptor: the
    ``ConfinedFile`` that owns it does."""

    def __init__(self, fd: int, size: int, recorder: Recorder | None) -> None:
        super().__init__()
        self.fd, self.size, self._position = fd, size, 0
        self.recorder = recorder

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"seek to {base + offset}, before the start of the file")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        # never ask past the end: a forged length must not size a read buffer
        data = os.pread(self.fd, max(0, min(len(view), self.size - self._position)), self._position)
        view[: len(data)] = data
        self._position += len(data)
        if self.recorder is not None:
            self.recorder.record(bytes_read=len(data))
        return len(data)
