"""Reading a confined file by descriptor: positioned reads that any number of
threads can issue at once, counted where a parser does the reading."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

from service.errors import InvalidInput
from service.tiles.paths import FIELD
from service.tiles.stats import Recorder

if TYPE_CHECKING:
    from typing_extensions import Buffer


def pread_exact(fd: int, count: int, offset: int) -> bytes:
    """``count`` bytes at ``offset`` (short reads retried; a truncated file raises)."""
    chunks, done = [], 0
    while done < count:
        chunk = os.pread(fd, count - done, offset + done)
        if not chunk:
            raise InvalidInput(f"file truncated: {count} bytes expected at offset {offset}", field=FIELD)
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


class CountingFile(io.RawIOBase):
    """A read-only file over a descriptor that counts the bytes it reads
    (what a parser reads of the structure); closes the descriptor if it owns it."""

    def __init__(self, fd: int, size: int, recorder: Recorder | None, owns_fd: bool = True) -> None:
        super().__init__()
        self.fd, self.size, self._position = fd, size, 0
        self.recorder = recorder
        self._owns_fd = owns_fd

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = os.pread(self.fd, len(view), self._position)
        view[: len(data)] = data
        self._position += len(data)
        if self.recorder is not None:
            self.recorder.record(bytes_read=len(data))
        return len(data)

    def close(self) -> None:
        if not self.closed and self._owns_fd:
            os.close(self.fd)
        super().close()
