"""Tokens per API group, through real servers: every method the server
serves, found by reflection, is called without a token, with a wrong one,
with one of another server, and with good ones (plain and hashed lines);
refusals are UNAUTHENTICATED with one message, audited, counted, and no
token reaches a log or a metric."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import stat
import urllib.request
from collections.abc import Sequence

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tensorflow.core.framework.types_pb2 import DT_STRING
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from ats_api.oip.v2 import open_inference_pb2 as oip
from ats_api.v1 import attention_sampling_pb2 as pb
from ats_client.client import channel_credentials
from service.config import AuthGroup
from service.server.auth import METHOD_GROUPS, REFUSAL, AuthInterceptor, TokenFile
from tests.security.support import ats_serve
from tests.support import encode_image, metric, random_image, scrape

PNG = encode_image(random_image(64, 64))
# A valid call of every method the server serves: its request messages.
GOOD_CALLS: dict[str, list[bytes]] = {
    "/ats.v1.AttentionSampling/Predict": [pb.PredictRequest(image=PNG, n_patches=1).SerializeToString()],
    "/ats.v1.AttentionSampling/PredictStream": [
        pb.PredictStreamRequest(header=pb.PredictRequest(n_patches=1)).SerializeToString(),
        pb.PredictStreamRequest(chunk=PNG).SerializeToString(),
    ],
    "/ats.v1.AttentionSampling/GetModelMetadata": [pb.GetModelMetadataRequest().SerializeToString()],
    "/ats.v1.AttentionSampling/ListModels": [pb.ListModelsRequest().SerializeToString()],
    "/inference.GRPCInferenceService/ServerLive": [oip.ServerLiveRequest().SerializeToString()],
    "/inference.GRPCInferenceService/ServerReady": [oip.ServerReadyRequest().SerializeToString()],
    "/inference.GRPCInferenceService/ModelReady": [oip.ModelReadyRequest(name="tiny").SerializeToString()],
    "/inference.GRPCInferenceService/ServerMetadata": [oip.ServerMetadataRequest().SerializeToString()],
    "/inference.GRPCInferenceService/ModelMetadata": [oip.ModelMetadataRequest().SerializeToString()],
    "/inference.GRPCInferenceService/ModelInfer": [
        oip.ModelInferRequest(
            inputs=[oip.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
            raw_input_contents=[len(PNG).to_bytes(4, "little") + PNG],
        ).SerializeToString()
    ],
    "/tensorflow.serving.PredictionService/Predict": [
        predict_pb2.PredictRequest(
            inputs={"image": {"dtype": DT_STRING, "string_val": [PNG]}}
        ).SerializeToString()
    ],
    "/tensorflow.serving.PredictionService/Classify": [b""],
    "/tensorflow.serving.PredictionService/Regress": [b""],
    "/tensorflow.serving.PredictionService/MultiInference": [b""],
    "/tensorflow.serving.PredictionService/GetModelMetadata": [
        get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]).SerializeToString()
    ],
    "/tensorflow.serving.ModelService/GetModelStatus": [
        get_model_status_pb2.GetModelStatusRequest().SerializeToString()
    ],
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest": [b""],
    "/grpc.health.v1.Health/Check": [health_pb2.HealthCheckRequest().SerializeToString()],
    "/grpc.health.v1.Health/Watch": [health_pb2.HealthCheckRequest().SerializeToString()],
    "/grpc.health.v1.Health/List": [health_pb2.HealthListRequest().SerializeToString()],
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": [
        reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    ],
}
# How a call that passes the token check ends: OK, except Health/List, which
# grpcio-health-checking's asyncio servicer does not implement.
ADMITTED = dict.fromkeys(GOOD_CALLS, grpc.StatusCode.OK) | {
    "/grpc.health.v1.Health/List": grpc.StatusCode.UNIMPLEMENTED
}
# TF Serving's methods other than Predict and metadata: served (they are in its
# service), and refused as UNIMPLEMENTED once past the token check.
ADMITTED |= dict.fromkeys(
    (f"/tensorflow.serving.PredictionService/{m}" for m in ("Classify", "Regress", "MultiInference")),
    grpc.StatusCode.UNIMPLEMENTED,
) | {"/tensorflow.serving.ModelService/HandleReloadConfigRequest": grpc.StatusCode.UNIMPLEMENTED}
DEFAULT_RESTRICTED = {AuthGroup.INFERENCE, AuthGroup.METADATA}
Metadata = Sequence[tuple[str, str]] | None


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def served_methods(channel: grpc.Channel) -> dict[str, tuple[bool, bool]]:
    """Every method the server lists by reflection: full name -> (client streams, server streams)."""
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    methods = {}
    for name in database.get_services():
        for method in pool.FindServiceByName(name).methods:
            methods[f"/{name}/{method.name}"] = (method.client_streaming, method.server_streaming)
    return methods


def call(
    channel: grpc.Channel, method: str, streaming: tuple[bool, bool], metadata: Metadata
) -> tuple[grpc.StatusCode, str]:
    """(code, message) of one call of ``method`` with its good requests; a
    server-streaming call is OK once its first response arrives."""
    requests = GOOD_CALLS[method]
    kinds = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }
    callable_ = kinds[streaming](method)
    try:
        result = callable_(iter(requests) if streaming[0] else requests[0], metadata=metadata, timeout=60)
        if streaming[1]:
            next(result)
            result.cancel()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details()


def codes(channel: grpc.Channel, methods: dict[str, tuple[bool, bool]], metadata: Metadata) -> dict:
    return {method: call(channel, method, streaming, metadata)[0] for method, streaming in methods.items()}


@pytest.fixture(scope="module")
def plain_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def token_server(serve, pki, plain_token, tmp_path_factory):
    """TLS and tokens with the default groups; its file holds a plain token and
    the hash of the script's token (so it is private: 0600)."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"# accepted tokens\n\n{plain_token}\n{(pki.folder / 'tokens.sha256').read_text()}")
    os.chmod(tokens, 0o600)
    return serve(*pki.server_flags(mutual=False), "--auth-tokens-file", str(tokens), client=pki.client())


@pytest.fixture(scope="module")
def channel(token_server, pki):
    with grpc.secure_channel(token_server.target, channel_credentials(pki.path("ca.pem"))) as opened:
        yield opened


@pytest.fixture(scope="module")
def methods(channel) -> dict[str, tuple[bool, bool]]:
    return served_methods(channel)


def test_every_served_method_is_in_the_group_table(methods):
    """A front end that registers a method must declare its group (else it is the strictest)."""
    assert set(methods) == set(METHOD_GROUPS) == set(GOOD_CALLS)
    assert set(methods.values()) == {
        (False, False),
        (True, False),
        (False, True),
        (True, True),
    }


@pytest.mark.parametrize(
    "credentials",
    ["none", "wrong token", "token of another server", "not a bearer token", "two tokens"],
)
def test_protected_groups_refuse_every_call_without_a_valid_token(
    channel, methods, credentials, other_pki, pki
):
    metadata = {
        "none": None,
        "wrong token": bearer("not-a-token"),
        "token of another server": bearer(other_pki.token),
        "not a bearer token": (("authorization", f"Basic {pki.token}"),),
        "two tokens": (*bearer(pki.token), *bearer("not-a-token")),
    }[credentials]
    for method, streaming in methods.items():
        code, message = call(channel, method, streaming, metadata)
        if METHOD_GROUPS[method] in DEFAULT_RESTRICTED:
            assert (code, message) == (grpc.StatusCode.UNAUTHENTICATED, REFUSAL), method
        else:
            assert code == ADMITTED[method], method  # health and reflection stay open


def test_every_call_succeeds_with_a_good_token(channel, methods, pki, plain_token):
    for token in (pki.token, plain_token):  # hashed line, plain line
        assert codes(channel, methods, bearer(token)) == ADMITTED


def test_refusals_are_audited_and_counted_and_tokens_never_leak(
    token_server, channel, methods, pki, plain_token, other_pki
):
    before = scrape(token_server.metrics_url)
    audited = token_server.log().count("service.audit: refused")
    protected = [m for m in methods if METHOD_GROUPS[m] in DEFAULT_RESTRICTED]
    for method in protected:
        call(channel, method, methods[method], bearer(other_pki.token))
    after = scrape(token_server.metrics_url)
    log = token_server.log()
    for method in protected:
        service, name = method.strip("/").split("/")
        labels = {"grpc_service": service, "grpc_method": name, "grpc_code": "UNAUTHENTICATED"}
        assert (
            metric(after, "grpc_server_handled_total", **labels)
            - metric(before, "grpc_server_handled_total", **labels)
            == 1
        ), method
        assert f"refused '{method}' from 'ipv4:127.0.0.1:" in log, method
    assert log.count("service.audit: refused") - audited == len(protected)
    assert "(client certificate: none): unknown token" in log
    assert "no authorization metadata" in log and "is not 'Bearer <token>'" in log
    with urllib.request.urlopen(token_server.metrics_url, timeout=10) as reply:
        page = reply.read().decode()
    for secret in (pki.token, plain_token, other_pki.token, "not-a-token"):
        assert secret not in log and secret not in page
    assert hashlib.sha256(plain_token.encode()).hexdigest() not in log


@pytest.fixture(scope="module")
def locked_server(serve, other_pki):
    """Plaintext on every interface, every group restricted, a public file of hashes."""
    assert stat.S_IMODE(os.stat(other_pki.path("tokens.sha256")).st_mode) == 0o644
    return serve(
        "--host",
        "0.0.0.0",
        "--auth-tokens-file",
        other_pki.path("tokens.sha256"),
        "--auth-groups",
        "inference,metadata,health,reflection",
        "--log-format",
        "json",
        client={"token": other_pki.token},
    )


def test_every_group_can_be_restricted(locked_server, methods, other_pki, pki):
    with grpc.insecure_channel(locked_server.target) as plain:
        for metadata in (None, bearer(pki.token)):
            assert set(codes(plain, methods, metadata).values()) == {grpc.StatusCode.UNAUTHENTICATED}
        assert codes(plain, methods, bearer(other_pki.token)) == ADMITTED


def test_json_audit_records_carry_their_fields(locked_server, methods, pki):
    with grpc.insecure_channel(locked_server.target) as plain:
        codes(plain, methods, bearer(pki.token))
    records = [json.loads(line) for line in locked_server.log().splitlines() if line.startswith("{")]
    audited = [r for r in records if r["logger"] == "service.audit"]
    refused = {r["method"].strip("'") for r in audited if r["reason"] == "unknown token"}
    assert refused == set(methods)
    for record in audited:
        assert record["audit"] == "refused" and record["level"] == "WARNING" and record["time"]
        assert record["peer"].startswith("'ipv4:127.0.0.1:") and record["client_certificate"] == "none"
    assert pki.token not in locked_server.log()


def test_a_plaintext_server_with_tokens_is_warned_about(locked_server):
    warnings = [line for line in locked_server.log().splitlines() if "INSECURE" in line]
    assert len(warnings) == 3, warnings
    assert "without TLS: images, predictions and tokens cross the network in clear" in warnings[0]
    assert "HTTP/REST (Open Inference Protocol) listens on 0.0.0.0:" in warnings[1]
    assert "without TLS" in warnings[1]
    assert "metrics served over plain HTTP on 0.0.0.0" in warnings[2]


def test_a_method_missing_from_the_table_needs_a_token(tmp_path, pki):
    """The strictest rule, on a real aio server with a method no group names,
    while no group is restricted."""
    tokens = TokenFile(pki.path("tokens.sha256"))

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def scenario() -> list[grpc.StatusCode]:
        server = grpc.aio.server(interceptors=[AuthInterceptor(tokens, frozenset())])
        handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Unlisted", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        found = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
            echo_call = client.unary_unary("/test.Unlisted/Echo")
            for metadata in (None, bearer(pki.token)):
                try:
                    await echo_call(b"ping", metadata=metadata, timeout=10)
                    found.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    found.append(error.code())
        await server.stop(0)
        return found

    assert asyncio.run(scenario()) == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK]


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [
        ("# nothing yet\n", 0o600, "holds no token"),
        ("sha256:abc\n", 0o644, "line 1: sha256: needs 64 hex digits"),
        ("a token with spaces\n", 0o600, "line 1: a token has no spaces"),
        ("plain-token\n", 0o644, "holds plain tokens and is readable by every user"),
    ],
)
def test_unusable_token_files_stop_the_start(tmp_path, content, mode, problem):
    path = tmp_path / "tokens"
    path.write_text(content)
    os.chmod(path, mode)
    done = ats_serve("--auth-tokens-file", str(path))
    assert done.returncode != 0 and "cannot start: --auth-tokens-file" in done.stderr
    assert problem in done.stderr, done.stderr
