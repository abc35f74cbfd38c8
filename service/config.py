"""Every server setting in one place: a command-line flag, an ATS_* environment
variable, and a default, in that order of precedence.

Containers and Kubernetes set environment variables; people type flags. Both
end up in one frozen ``Config`` whose effective values (and where each came
from) are logged at start.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

MiB = 1 << 20


def default_model_repository() -> pathlib.Path:
    """The repository's models/ directory next to this package (editable
    installs and source checkouts), else ./models (installed copies)."""
    beside = pathlib.Path(__file__).resolve().parent.parent / "models"
    return beside if beside.is_dir() else pathlib.Path("models")


def _setting(default: Any, help: str, *, choices: Sequence[str] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Config:
    model_repository: str = _setting(
        "",
        "model repository in the TensorFlow Serving layout <repo>/<name>/<version>/ "
        "(default: the shipped models/)",
    )
    default_model: str = _setting(
        "", "model served when a request names none (default: the only model, if there is one)"
    )
    host: str = _setting("0.0.0.0", "address the gRPC and metrics servers bind")
    port: int = _setting(8500, "gRPC port")
    metrics_port: int = _setting(8502, "Prometheus /metrics HTTP port (0 disables)")
    max_concurrent_predicts: int = _setting(
        4, "predictions running at once; more wait up to --queue-timeout, then get RESOURCE_EXHAUSTED"
    )
    queue_timeout: float = _setting(2.0, "seconds a prediction waits for a free slot")
    max_concurrent_rpcs: int = _setting(
        1024, "RPCs accepted at once (any method) before RESOURCE_EXHAUSTED; an idle one costs no thread"
    )
    max_streams_per_connection: int = _setting(
        32, "concurrent calls one client connection may have open (HTTP/2 max concurrent streams)"
    )
    memory_budget_bytes: int = _setting(
        3 << 30,
        "decoded-pixel memory all predictions may reserve at once (estimated from image headers "
        "before decoding); a request that does not fit waits up to --queue-timeout",
    )
    max_uploads: int = _setting(16, "streamed uploads received at once; more wait up to --queue-timeout")
    upload_budget_bytes: int = _setting(
        1 << 30, "bytes all uploads and unary image payloads in flight may hold at once"
    )
    upload_header_timeout: float = _setting(10.0, "seconds a stream may take to send its header")
    upload_idle_timeout: float = _setting(10.0, "seconds a stream may pause between two chunks")
    upload_total_timeout: float = _setting(300.0, "seconds a whole streamed upload may take")
    max_message_bytes: int = _setting(64 * MiB, "largest gRPC message received or sent")
    max_image_bytes: int = _setting(
        512 * MiB, "largest encoded image or raw tensor, streamed uploads included"
    )
    max_image_pixels: int = _setting(
        200_000_000, "largest image (width x height), checked from the header before decoding"
    )
    poll_interval: float = _setting(1.0, "seconds between repository scans (0: scan once at start)")
    grace_period: float = _setting(20.0, "seconds in-flight requests get to finish on SIGTERM")
    drain_delay: float = _setting(
        2.0, "seconds health reports NOT_SERVING before the server stops accepting calls on SIGTERM"
    )
    data_root: str = _setting("", "directory tile references are resolved in (empty: none accepted)")
    tile_cache_bytes: int = _setting(256 * MiB, "decoded-tile cache shared by tile references")
    log_format: str = _setting("text", "log line format", choices=("text", "json"))
    log_level: str = _setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def resolved_repository(self) -> pathlib.Path:
        return pathlib.Path(self.model_repository) if self.model_repository else default_model_repository()


# Resident memory of an idle server with the shipped model, after it served
# a maximum-size image once (TensorFlow's oneDNN pool keeps the attention
# network's high-water mark): measured in bench/results/reliability.md.
IDLE_FOOTPRINT_BYTES = 1 << 30
# Messages gRPC may be receiving at once before a handler charges them.
RECEIVING_MESSAGES = 2


def memory_ceiling(config: Config) -> int:
    """The memory a server with ``config`` may use at most: the one formula
    container limits are derived from (docker/k8s/deployment.yaml, compose).

    idle footprint + decoded-pixel budget + upload budget + tile cache
    + messages being received (RECEIVING_MESSAGES x --max-message-bytes)
    """
    return (
        IDLE_FOOTPRINT_BYTES
        + config.memory_budget_bytes
        + config.upload_budget_bytes
        + config.tile_cache_bytes
        + RECEIVING_MESSAGES * config.max_message_bytes
    )


def env_name(field: str) -> str:
    return "ATS_" + field.upper()


def _flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ats-serve",
        description="Attention-sampling gRPC inference server. "
        "Every flag can also be set with the ATS_* environment variable named after it.",
    )
    for field in dataclasses.fields(Config):
        parser.add_argument(
            _flag_name(field.name),
            dest=field.name,
            type=type(field.default),
            default=None,
            choices=field.metadata["choices"],
            help=f"{field.metadata['help']} [{env_name(field.name)}, default {field.default!r}]",
        )
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Config, dict[str, str]]:
    """Parse flags over environment over defaults.

    Returns the config and, per setting, where its value came from
    ("flag", "env" or "default") for the start-up log.
    """
    environ = os.environ if environ is None else environ
    parser = _parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in dataclasses.fields(Config):
        kind: type[Any] = type(field.default)  # every field has a default (_setting)
        flag_value = getattr(args, field.name)
        if flag_value is not None:
            values[field.name], sources[field.name] = flag_value, "flag"
        elif env_name(field.name) in environ:
            raw = environ[env_name(field.name)]
            try:
                values[field.name] = kind(raw)
            except ValueError:
                parser.error(f"{env_name(field.name)}={raw!r} is not a valid {kind.__name__}")
            choices = field.metadata["choices"]
            if choices and values[field.name] not in choices:
                parser.error(f"{env_name(field.name)}={raw!r}: choose from {', '.join(choices)}")
            sources[field.name] = "env"
        else:
            sources[field.name] = "default"
    return Config(**values), sources


def describe(config: Config, sources: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Effective settings for the start-up log: value and origin of each."""
    described = {
        f.name: {"value": getattr(config, f.name), "from": sources.get(f.name, "default")}
        for f in dataclasses.fields(Config)
    }
    described["model_repository"]["value"] = str(config.resolved_repository())
    return described
