"""Uploads: the bytes a request brings before it may run.

A streamed upload is received before the request asks for a prediction
slot, so a slow or stalled sender never holds one; it is bounded in time
(a deadline for the header, an idle limit between chunks, a total limit)
and, with every other upload, in number and in bytes held at once. Unary
messages, already received by gRPC, are charged to the same byte limit so
that many large ones cannot pile up behind the prediction slots.

This runs on the server's event loop: asyncio primitives, no threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from service.admission import acquire_within
from service.errors import AtCapacity, InvalidInput, Stalled, TooLarge
from service.waiting import within

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    header_timeout: float  # seconds from the call's start to its first message
    idle_timeout: float  # seconds between two chunks
    total_timeout: float  # seconds for a whole upload
    max_uploads: int  # streamed uploads being received at once
    max_bytes: int  # bytes all uploads and unary payloads hold at once
    max_image_bytes: int  # one image
    max_image_pixels: int  # one image, checked against a declared tensor shape


@dataclasses.dataclass(frozen=True)
class Declared:
    """What a stream's header promises: a raw tensor's pixel count and bytes."""

    pixels: int
    nbytes: int


class Uploads:
    """The server's uploads in flight, bounded by :class:`UploadLimits`."""

    def __init__(self, limits: UploadLimits, queue_timeout: float) -> None:
        self.limits = limits
        self._queue_timeout = queue_timeout
        self._slots = asyncio.Semaphore(limits.max_uploads)
        self.receiving = 0
        self.bytes_held = 0

    async def first(self, messages: AsyncIterator[T]) -> T | None:
        """A stream's first message, or None if it ended; a stalled sender
        gets DEADLINE_EXCEEDED after the header timeout."""
        try:
            return await within(anext(messages, None), self.limits.header_timeout)
        except TimeoutError:
            raise Stalled(
                f"no header within {self.limits.header_timeout:g} s of the call's start "
                "(--upload-header-timeout)",
                field="header",
            ) from None

    @contextlib.asynccontextmanager
    async def upload(self) -> AsyncIterator[Upload]:
        """One request's upload; whatever it holds is released at the end."""
        upload = Upload(self)
        try:
            yield upload
        finally:
            upload.release()

    def _charge(self, nbytes: int) -> None:
        if self.bytes_held + nbytes > self.limits.max_bytes:
            raise AtCapacity(
                f"uploads in flight hold {self.bytes_held} of {self.limits.max_bytes} bytes "
                "(--upload-budget-bytes); retry later"
            )
        self.bytes_held += nbytes

    async def _acquire_slot(self) -> None:
        if not await acquire_within(self._slots, self._queue_timeout):
            raise AtCapacity(
                f"{self.limits.max_uploads} uploads were being received for {self._queue_timeout:g} s "
                "(--max-uploads); retry later"
            )


class Upload:
    """The bytes one request holds, charged to the server's :class:`Uploads`."""

    def __init__(self, uploads: Uploads) -> None:
        self._uploads = uploads
        self._held = 0
        self._slot = False
        self.streamed = False

    def hold(self, nbytes: int) -> None:
        """Charge a payload that already arrived (a unary message)."""
        self._uploads._charge(nbytes)
        self._held += nbytes

    async def receive(
        self,
        chunks: AsyncIterator[bytes],
        declared: Declared | None = None,
        *,
        max_bytes: int | None = None,
        what: str = "streamed image",
    ) -> bytes:
        """Every chunk of a stream, within the time and size limits; a declared
        tensor is checked before the first chunk is awaited. ``max_bytes``
        (default: the image limit) caps what the stream may send, ``what``
        names it in that error (an HTTP front end receives a whole request
        body here, not only an image)."""
        limits = self._uploads.limits
        ceiling = limits.max_image_bytes if max_bytes is None else max_bytes
        if declared is not None:
            if declared.pixels > limits.max_image_pixels:
                raise TooLarge(
                    f"declared tensor of {declared.pixels} pixels exceeds the server limit of "
                    f"{limits.max_image_pixels} pixels",
                    field="header.tensor.shape",
                )
            if declared.nbytes > limits.max_image_bytes:
                raise TooLarge(
                    f"declared tensor of {declared.nbytes} bytes exceeds the server limit of "
                    f"{limits.max_image_bytes} bytes",
                    field="header.tensor.shape",
                )
            ceiling = declared.nbytes
        self.streamed = True
        await self._uploads._acquire_slot()
        self._slot = True
        self._uploads.receiving += 1
        give_up = time.monotonic() + limits.total_timeout
        parts: list[bytes] = []
        total = 0
        while True:
            wait = min(limits.idle_timeout, give_up - time.monotonic())
            try:
                chunk = await within(anext(chunks, None), wait)
            except TimeoutError:
                which = "idle" if wait == limits.idle_timeout else "total"
                raise Stalled(
                    f"upload stalled: {total} bytes received, no chunk for {max(wait, 0):.1f} s "
                    f"(--upload-{which}-timeout)",
                    field="chunk",
                ) from None
            if chunk is None:
                return b"".join(parts)
            total += len(chunk)
            if total > ceiling:
                if declared is not None:
                    raise InvalidInput(
                        f"the stream sent more than the {declared.nbytes} bytes its header declared",
                        field="chunk",
                    )
                raise TooLarge(f"{what} exceeds the server limit of {ceiling} bytes", field="chunk")
            self.hold(len(chunk))
            parts.append(chunk)

    def release(self) -> None:
        self._uploads.bytes_held -= self._held
        self._held = 0
        if self._slot:
            self._uploads.receiving -= 1
            self._uploads._slots.release()
            self._slot = False
