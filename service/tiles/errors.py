"""Tile-reference refusals the pipeline's error classes do not cover yet.

Subclasses of ``PipelineError``: the servicer maps any of them to the gRPC
status named by ``code``.
"""

from __future__ import annotations

from service.pipeline.errors import PipelineError


class PermissionDenied(PipelineError):
    """A reference that would read outside the data root, or a file that is
    not a regular file (device, FIFO, socket)."""

    code = "PERMISSION_DENIED"
