"""``AtsClient``: predict from a path, encoded bytes or a pixel array.

Requests larger than a unary message may be (gRPC's default receive limit is
4 MiB) go through ``PredictStream`` in chunks, chosen automatically. Calls that
fail with UNAVAILABLE (server starting, restarting, or draining behind a
balancer) are retried with exponential backoff.

A server started with TLS needs ``tls_ca`` (or ``tls=True`` when its certificate
is signed by a public CA), with mutual TLS also ``tls_cert`` and ``tls_key``;
one started with tokens needs ``token``, sent as ``authorization: Bearer``.
"""

from __future__ import annotations

import ipaddress
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_api.v1 import attention_sampling_pb2_grpc as pb_grpc

MiB = 1 << 20
# Room for everything in a request besides its pixels (options, names, a tile path):
# sizing by the pixels alone spares serialising the request just to measure it.
_OPTIONS_MARGIN = 64 << 10
ImageLike = str | os.PathLike | bytes | np.ndarray
PemLike = str | os.PathLike | bytes  # a PEM file's path, or its contents
T = TypeVar("T")


class AtsError(Exception):
    """A call the server refused: its status code, message and the request
    fields it named (google.rpc.BadRequest details)."""

    def __init__(self, code: grpc.StatusCode, message: str, fields: dict[str, str]) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.fields = fields

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> AtsError:
        fields: dict[str, str] = {}
        status = rpc_status.from_call(error)
        for detail in status.details if status is not None else ():
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                fields.update({v.field: v.description for v in bad_request.field_violations})
        return cls(error.code(), error.details() or "", fields)


def tensor_message(pixels: np.ndarray, with_data: bool = True) -> pb.Tensor:
    """An (H, W[, C]) uint8 array as an ats.v1 Tensor."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    dtypes = {np.dtype(np.uint8): pb.UINT8, np.dtype(np.uint16): pb.UINT16, np.dtype(np.float32): pb.FLOAT32}
    if pixels.dtype not in dtypes:
        raise TypeError(f"pixel arrays must be uint8 (or uint16/float32), not {pixels.dtype}")
    return pb.Tensor(
        shape=pixels.shape, dtype=dtypes[pixels.dtype], data=pixels.tobytes() if with_data else b""
    )


def _pem(value: PemLike) -> bytes:
    if isinstance(value, bytes):
        return value
    with open(value, "rb") as file:
        return file.read()


def is_local(target: str) -> bool:
    """Whether a gRPC target names this machine (loopback or a Unix socket)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    address = target.removeprefix("dns:").lstrip("/").removeprefix("ipv4:").removeprefix("ipv6:")
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or "]" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_credentials(
    tls_ca: PemLike | None = None, tls_cert: PemLike | None = None, tls_key: PemLike | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials: trust ``tls_ca`` (default: the system's CAs), and present
    ``tls_cert`` with ``tls_key`` to a server that wants client certificates."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a client certificate and its key go together: give both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=None if tls_ca is None else _pem(tls_ca),
        private_key=None if tls_key is None else _pem(tls_key),
        certificate_chain=None if tls_cert is None else _pem(tls_cert),
    )


class AtsClient:
    def __init__(
        self,
        target: str = "localhost:8500",
        *,
        timeout: float | None = 60.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_message_bytes: int = 64 * MiB,
        stream_threshold: int = 4 * MiB,
        chunk_bytes: int = 1 * MiB,
        tls: bool = False,
        tls_ca: PemLike | None = None,
        tls_cert: PemLike | None = None,
        tls_key: PemLike | None = None,
        token: str | None = None,
    ) -> None:
        """``stream_threshold``: request size beyond which ``PredictStream`` is used;
        ``timeout``: default deadline per call in seconds (None: none).

        TLS is used when ``tls`` is true or any ``tls_*`` is given (a PEM path
        or PEM bytes). ``token`` is refused over plaintext to another machine,
        as gRPC refuses call credentials on insecure channels."""
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.stream_threshold = stream_threshold
        self.chunk_bytes = chunk_bytes
        secure = tls or tls_ca is not None or tls_cert is not None or tls_key is not None
        if token is not None and not secure and not is_local(target):
            raise ValueError(f"a token is sent to {target} over TLS only: give tls_ca or tls=True")
        self._metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if secure:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.AttentionSamplingStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AtsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------
    def predict(
        self,
        image: ImageLike,
        *,
        model: str = "",
        version: int = 0,
        n_patches: int = 0,
        seed: int | None = None,
        mode: str = "sample",
        attention_map: bool = True,
        patch_crops: bool = False,
        n_regions: int = 0,
        tissue_mask: str = "off",
        coarse_view: bool = False,
        timeout: float | None = None,
    ) -> pb.PredictResponse:
        """Classify ``image``: a file path, encoded bytes (PNG, JPEG, TIFF, WebP),
        or an (H, W[, C]) uint8 array. Raises ``AtsError``.

        Two-level models also take ``n_regions`` (0: the model's default;
        ``n_patches`` is then per region), ``tissue_mask`` ("off" or "otsu")
        and ``coarse_view`` (return the view the regions were drawn from)."""
        request = self._request(model, version, n_patches, seed, mode, attention_map, patch_crops)
        _two_level_options(request, n_regions, tissue_mask, coarse_view)
        if isinstance(image, np.ndarray):
            request.tensor.CopyFrom(tensor_message(image))
            size = image.nbytes
        else:
            if not isinstance(image, bytes):
                with open(image, "rb") as file:
                    image = file.read()
            request.image = image
            size = len(image)
        return self._send(request, timeout, streaming=size > self.stream_threshold - _OPTIONS_MARGIN)

    def predict_tile(
        self,
        path: str,
        *,
        level: int | None = None,
        model: str = "",
        version: int = 0,
        n_patches: int = 0,
        seed: int | None = None,
        mode: str = "sample",
        attention_map: bool = True,
        patch_crops: bool = False,
        n_regions: int = 0,
        tissue_mask: str = "off",
        coarse_view: bool = False,
        timeout: float | None = None,
    ) -> pb.PredictResponse:
        """Classify an image stored on the server, relative to its --data-root
        (options as for :meth:`predict`)."""
        request = self._request(model, version, n_patches, seed, mode, attention_map, patch_crops)
        _two_level_options(request, n_regions, tissue_mask, coarse_view)
        request.tile.path = path
        if level is not None:
            request.tile.level = level
        return self.send(request, timeout)

    def send(self, request: pb.PredictRequest, timeout: float | None = None) -> pb.PredictResponse:
        """Send a prepared request, streaming it when it is too large for one message."""
        return self._send(request, timeout, streaming=request.ByteSize() > self.stream_threshold)

    def _send(self, request: pb.PredictRequest, timeout: float | None, streaming: bool) -> pb.PredictResponse:
        timeout = self.timeout if timeout is None else timeout
        if streaming:
            return self._call(
                lambda: self._stub.PredictStream(
                    self._chunks(request), timeout=timeout, metadata=self._metadata
                )
            )
        return self._call(lambda: self._stub.Predict(request, timeout=timeout, metadata=self._metadata))

    def metadata(self, model: str = "", timeout: float | None = None) -> pb.ModelMetadata:
        request = pb.GetModelMetadataRequest(model_name=model)
        return self._call(
            lambda: self._stub.GetModelMetadata(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        )

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._call(
            lambda: self._stub.ListModels(
                pb.ListModelsRequest(), timeout=timeout or self.timeout, metadata=self._metadata
            )
        )

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) of ``service``
        ("" = the whole server, or a model name)."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = self._call(
            lambda: self._health.Check(request, timeout=timeout or self.timeout, metadata=self._metadata)
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _request(
        model: str,
        version: int,
        n_patches: int,
        seed: int | None,
        mode: str,
        attention_map: bool,
        patch_crops: bool,
    ) -> pb.PredictRequest:
        request = pb.PredictRequest(
            model_name=model,
            model_version=version,
            n_patches=n_patches,
            mode=pb.SamplingMode.Value(mode.upper()),
            output=pb.OutputOptions(include_attention_map=attention_map, include_patch_crops=patch_crops),
        )
        if seed is not None:
            request.seed = seed
        return request

    def _chunks(self, request: pb.PredictRequest) -> Iterator[pb.PredictStreamRequest]:
        """Header (every option, no pixels) then the pixels in ``chunk_bytes`` pieces."""
        header = pb.PredictRequest()
        header.CopyFrom(request)
        if request.WhichOneof("source") == "tensor":
            data = request.tensor.data
            header.tensor.data = b""
        else:
            data = request.image
            header.ClearField("image")
        yield pb.PredictStreamRequest(header=header)
        view = memoryview(data)
        for start in range(0, len(data), self.chunk_bytes):
            yield pb.PredictStreamRequest(chunk=bytes(view[start : start + self.chunk_bytes]))

    def _call(self, call: Callable[[], T]) -> T:
        """Run ``call``, retrying UNAVAILABLE with jittered exponential backoff."""
        attempt = 0
        while True:
            try:
                return call()
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
                    raise AtsError.from_rpc_error(error) from None
            time.sleep(self.backoff * 2**attempt * random.uniform(0.5, 1.5))
            attempt += 1


def _two_level_options(
    request: pb.PredictRequest, n_regions: int, tissue_mask: str, coarse_view: bool
) -> None:
    """Set the options only two-level models read (one-level models ignore them)."""
    request.n_regions = n_regions
    request.tissue_mask = pb.TissueMask.Value(f"TISSUE_MASK_{tissue_mask.upper()}")
    request.output.include_coarse_view = coarse_view
