"""Every server setting in one place: a command-line flag, an ATS_* environment
variable, and a default, in that order of precedence.

Containers and Kubernetes set environment variables; people type flags. Both
end up in one frozen ``Config`` whose effective values (and where each came
from) are logged at start.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from service.precision import PRECISIONS

MiB = 1 << 20
# The shipped models/ holds a one-level and a two-level model; requests that
# name none get this one.
SHIPPED_DEFAULT_MODEL = "megapixel-digits"


def default_model_repository() -> pathlib.Path:
    """The repository's models/ directory next to this package (editable
    installs and source checkouts), else ./models (installed copies)."""
    beside = pathlib.Path(__file__).resolve().parent.parent / "models"
    return beside if beside.is_dir() else pathlib.Path("models")


class AuthGroup(str, enum.Enum):
    """API groups an operator may require a token for (``--auth-groups``),
    as Triton's restricted protocol groups its endpoints."""

    INFERENCE = "inference"
    METADATA = "metadata"
    HEALTH = "health"
    REFLECTION = "reflection"


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
        "",
        "model served when a request names none (default: the only model, if there is one; "
        f"{SHIPPED_DEFAULT_MODEL} for the shipped models/)",
    )
    host: str = _setting(
        "127.0.0.1",
        "address the gRPC server binds (and metrics, unless --metrics-host): 127.0.0.1 answers this "
        "machine only, 0.0.0.0 every interface (the Docker image sets it)",
    )
    port: int = _setting(8500, "gRPC port")
    metrics_port: int = _setting(8502, "Prometheus /metrics HTTP port (0 disables)")
    metrics_host: str = _setting("", "address the metrics server binds (empty: --host)")
    http_port: int = _setting(
        8501, "Open Inference Protocol HTTP/REST port (/v2/...) on --host, TLS as the gRPC port; 0 disables"
    )
    health_port: int = _setting(
        0,
        "plaintext port serving grpc.health.v1 only, for probes that cannot speak TLS "
        "(Kubernetes' gRPC probe); binds --host; 0 disables",
    )
    tls_cert: str = _setting(
        "", "PEM certificate (chain) of the gRPC port; with --tls-key, the port speaks TLS only"
    )
    tls_key: str = _setting("", "PEM private key of --tls-cert (readable by its owner only)")
    tls_client_ca: str = _setting(
        "", "PEM CA certificates: clients must present a certificate signed by one (mutual TLS)"
    )
    auth_tokens_file: str = _setting(
        "",
        "file of accepted tokens, one per line, or sha256:<hex> of each; calls of --auth-groups "
        "must send 'authorization: Bearer <token>'; re-read when it changes",
    )
    auth_groups: str = _setting(
        "inference,metadata",
        "comma-separated API groups that need a token when --auth-tokens-file is set: "
        "inference, metadata, health, reflection (empty: none)",
    )
    metrics_tls_cert: str = _setting(
        "", "PEM certificate of the metrics endpoint (HTTPS with --metrics-tls-key)"
    )
    metrics_tls_key: str = _setting("", "PEM private key of --metrics-tls-cert")
    metrics_tls_client_ca: str = _setting(
        "", "PEM CA certificates: scrapers must present a certificate signed by one"
    )
    max_concurrent_predicts: int = _setting(
        4, "predictions running at once; more wait up to --queue-timeout, then get RESOURCE_EXHAUSTED"
    )
    queue_timeout: float = _setting(2.0, "seconds a prediction waits for a free slot")
    batch_max_size: int = _setting(
        0,
        "decoded images that may share one graph call (attention, features and head batched across "
        "requests); 0: no batching (on 2 CPU cores it measured no gain: bench/results/service.md)",
    )
    batch_timeout_us: int = _setting(
        0,
        "microseconds a batch may wait for more requests after its oldest one arrived (0: run what is "
        "queued at once; batches still form while the previous one runs)",
    )
    batch_threads: int = _setting(1, "batches running at once")
    precision: str = _setting(
        "float32",
        "arithmetic of the models: float32 (theirs) or bfloat16 (oneDNN mixed precision on CPUs "
        "with AVX512_BF16 or AMX: faster, answers move a little; bench/results/service.md)",
        choices=PRECISIONS,
    )
    intra_op_threads: int = _setting(
        0, "threads one TensorFlow op may use (0: TensorFlow's default, one per core)"
    )
    inter_op_threads: int = _setting(
        0, "TensorFlow ops that may run at once (0: TensorFlow's default, one per core)"
    )
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
    # One 100k x 100k grayscale slide's oversampled coarse level (its 1/16 level,
    # 37 MiB) and its regions fit, so repeated requests on a slide decode
    # only new patches. Measured over 24 requests on 12 such slides: 256 MiB
    # peaked 250 MB higher than 64 MiB, for a warm p50 within 3% of it.
    tile_cache_bytes: int = _setting(64 * MiB, "decoded-tile cache shared by tile references")
    view_oversample: int = _setting(
        4,
        "a tile reference's low view is made from a pyramid level at least this many times its size "
        "(1: the nearest level), averaging lossy level tiles away",
    )
    log_format: str = _setting("text", "log line format", choices=("text", "json"))
    log_level: str = _setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    tracing: bool = _setting(
        False,
        "OpenTelemetry spans per request and stage, W3C trace context from gRPC metadata; "
        "exporter and sampler from the standard OTEL_* variables",
    )

    def resolved_repository(self) -> pathlib.Path:
        return pathlib.Path(self.model_repository) if self.model_repository else default_model_repository()

    def resolved_default_model(self) -> str:
        """The default model: the configured one, else the shipped repository's
        (it holds two models), else "" (the registry's only-model rule)."""
        if self.default_model or self.model_repository:
            return self.default_model
        return SHIPPED_DEFAULT_MODEL

    def restricted_groups(self) -> frozenset[AuthGroup]:
        """The groups that need a token (none without --auth-tokens-file)."""
        if not self.auth_tokens_file:
            return frozenset()
        return frozenset(AuthGroup(name.strip()) for name in self.auth_groups.split(",") if name.strip())


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


def boolean(text: str) -> bool:
    """An on/off setting as people and container specs write it (bool("false") is True)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is neither true nor false")


def _kind(field: dataclasses.Field[Any]) -> Any:
    """How a flag or variable's text becomes the field's value."""
    return boolean if isinstance(field.default, bool) else type(field.default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ats-serve",
        description="Attention-sampling gRPC inference server. "
        "Every flag can also be set with the ATS_* environment variable named after it.",
    )
    for field in dataclasses.fields(Config):
        switch = isinstance(field.default, bool)  # a bare --tracing means on
        parser.add_argument(
            _flag_name(field.name),
            dest=field.name,
            type=_kind(field),
            nargs="?" if switch else None,
            const=True if switch else None,
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
        kind = _kind(field)  # every field has a default (_setting)
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
    config = Config(**values)
    problem = inconsistency(config)
    if problem:
        parser.error(problem)
    return config, sources


def inconsistency(config: Config) -> str | None:
    """Why ``config`` cannot run safely as asked (TLS half configured, unknown
    token groups, a plaintext health port for a restricted health group), or None.

    Refused at start rather than guessed at: a forgotten --tls-key must not
    become a plaintext server."""
    for prefix in ("tls", "metrics_tls"):
        cert, key, client_ca = (getattr(config, f"{prefix}_{part}") for part in ("cert", "key", "client_ca"))
        flag = _flag_name(prefix)
        if bool(cert) != bool(key):
            return f"{flag}-cert and {flag}-key go together: set both or neither"
        if client_ca and not cert:
            return f"{flag}-client-ca needs {flag}-cert and {flag}-key: client certificates need TLS"
    known = {group.value for group in AuthGroup}
    unknown = {name.strip() for name in config.auth_groups.split(",") if name.strip()} - known
    if unknown:
        choices = ", ".join(group.value for group in AuthGroup)
        return f"--auth-groups: unknown {', '.join(sorted(unknown))}; choose from {choices}"
    if config.health_port and AuthGroup.HEALTH in config.restricted_groups():
        return "--health-port serves health without a token, but --auth-groups restricts health"
    for name in ("batch_max_size", "batch_timeout_us", "intra_op_threads", "inter_op_threads"):
        if getattr(config, name) < 0:
            return f"{_flag_name(name)} must be 0 or more"
    if config.batch_threads < 1:
        return "--batch-threads must be at least 1"
    if not 1 <= config.view_oversample <= 16:
        return "--view-oversample must be between 1 and 16"
    return None


def describe(config: Config, sources: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Effective settings for the start-up log: value and origin of each."""
    described = {
        f.name: {"value": getattr(config, f.name), "from": sources.get(f.name, "default")}
        for f in dataclasses.fields(Config)
    }
    described["model_repository"]["value"] = str(config.resolved_repository())
    return described
