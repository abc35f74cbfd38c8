"""Predictions through a real server process and the real client: every way to
send an image, the response's content, and agreement with the model's own
all-in-one ``predict_image`` signature."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_client import AtsClient
from tests.support import encode_image, metric, random_image, scrape

# A decoded image runs the fused graph (batching is off by default: no queue stage).
STAGES = ["decode", "lowres", "attention", "sampling", "extract", "features", "aggregate", "head", "total"]


@pytest.fixture(scope="module")
def client(ats_server):
    with AtsClient(ats_server.target) as client:
        yield client


@pytest.fixture(scope="module")
def meta(client):
    return client.metadata()


def check_response(
    response: pb.PredictResponse, meta: pb.ModelMetadata, height: int, width: int, n_patches: int
) -> None:
    """Everything a response promises, checked against the model's metadata."""
    assert (response.model_name, response.model_version) == ("tiny", 1)
    probabilities = np.array([p.probability for p in response.probabilities])
    assert [p.name for p in response.probabilities] == list(meta.classes)
    assert probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert response.class_index == probabilities.argmax()
    assert response.label == meta.classes[response.class_index]
    assert (response.image_height, response.image_width, response.image_channels) == (height, width, 3)
    att = response.attention
    low = (round(height * meta.low_scale), round(width * meta.low_scale))
    assert (att.height, att.width) == low  # the tiny model's map has the low view's size
    values = np.array(att.values).reshape(att.height, att.width)
    assert values.sum() == pytest.approx(1, abs=1e-4)
    assert att.cell_height == pytest.approx(height / low[0]) and att.offset_y == 0
    assert len(response.patches) == n_patches
    cells = {(p.cell_y, p.cell_x) for p in response.patches}
    assert len(cells) == n_patches  # the tiny model samples without replacement
    for patch in response.patches:
        assert (patch.height, patch.width) == tuple(meta.patch_size)
        assert patch.probability == pytest.approx(values[patch.cell_y, patch.cell_x], rel=1e-5)
        # the box is centred on its cell, per the geometry the map carries
        centre_y = att.offset_y + (patch.cell_y + 0.5) * att.cell_height
        assert patch.y == round(centre_y - patch.height / 2)
        assert patch.x == round(att.offset_x + (patch.cell_x + 0.5) * att.cell_width - patch.width / 2)
    assert [t.stage for t in response.timings] == STAGES
    total = response.timings[-1].seconds
    assert 0 < sum(t.seconds for t in response.timings[:-1]) <= total


def test_predict_png(client, meta):
    pixels = random_image(240, 320)
    response = client.predict(encode_image(pixels, "PNG"), seed=5)
    check_response(response, meta, 240, 320, meta.n_patches)
    assert response.seed == 5


def test_predict_jpeg_from_a_path(client, meta, tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(encode_image(random_image(200, 256), "JPEG", quality=90))
    check_response(client.predict(str(path), n_patches=7), meta, 200, 256, 7)


def test_raw_tensor_and_png_give_the_same_answer(client, meta):
    pixels = random_image(256, 256, seed=1)
    from_tensor = client.predict(pixels, seed=11)
    from_png = client.predict(encode_image(pixels), seed=11)
    check_response(from_tensor, meta, 256, 256, meta.n_patches)
    assert list(from_tensor.probabilities) == list(from_png.probabilities)
    assert list(from_tensor.patches) == list(from_png.patches)


def test_seed_reproduces_and_is_reported(client):
    pixels = random_image(256, 256, seed=2)
    first = client.predict(pixels)
    again = client.predict(pixels, seed=first.seed)
    assert list(again.patches) == list(first.patches)
    others = [client.predict(pixels, seed=first.seed + k).patches for k in range(1, 4)]
    assert any(list(o) != list(first.patches) for o in others)


def test_top_k_takes_the_most_attended_cells(client):
    pixels = random_image(256, 256, seed=3)
    response = client.predict(pixels, mode="top_k", n_patches=5, seed=1)
    values = np.sort(np.array(response.attention.values))[::-1]
    assert [p.probability for p in response.patches] == pytest.approx(values[:5].tolist(), rel=1e-6)
    assert list(client.predict(pixels, mode="top_k", n_patches=5, seed=99).patches) == list(response.patches)


def test_patch_crops_are_the_image_pixels(client):
    pixels = random_image(96, 128, seed=4)
    response = client.predict(pixels, patch_crops=True, n_patches=10, seed=0)
    padded = np.pad(pixels, ((64, 64), (64, 64), (0, 0)))  # outside the image is zeros
    for patch in response.patches:
        crop = np.frombuffer(patch.crop.data, np.uint8).reshape(tuple(patch.crop.shape))
        expected = padded[
            64 + patch.y : 64 + patch.y + patch.height, 64 + patch.x : 64 + patch.x + patch.width
        ]
        np.testing.assert_array_equal(crop, expected)


def test_attention_map_can_be_left_out(client):
    response = client.predict(random_image(128, 128), attention_map=False)
    assert not response.attention.values and response.attention.height == 16


@pytest.mark.parametrize("as_tensor", [False, True], ids=["png", "tensor"])
def test_large_image_streams_by_itself(ats_server, client, meta, as_tensor):
    """Over 4 MiB the client switches to PredictStream; the server counts it as such."""
    pixels = np.random.default_rng(7).integers(0, 256, size=(1500, 1500, 3), dtype=np.uint8)
    image = pixels if as_tensor else encode_image(pixels, compress_level=1)
    assert len(image if isinstance(image, bytes) else pixels.tobytes()) > 4 << 20
    before = metric(scrape(ats_server.metrics_url), "ats_requests_total", rpc="PredictStream", code="OK")
    response = client.predict(image, seed=3)
    check_response(response, meta, 1500, 1500, meta.n_patches)
    after = metric(scrape(ats_server.metrics_url), "ats_requests_total", rpc="PredictStream", code="OK")
    assert after == before + 1


def test_metadata_and_list_models(client, meta):
    assert meta.name == "tiny" and len(meta.classes) == 10
    assert list(meta.patch_size) == [8, 8] and meta.channels == 3 and not meta.replace
    assert [(v.version, v.state) for v in meta.versions] == [(1, pb.ModelVersionStatus.READY)]
    assert meta.versions[0].load_seconds > 0
    assert list(meta.inputs.source_kinds) == ["image", "tensor"]
    assert set(meta.inputs.image_formats) == {"PNG", "JPEG", "TIFF", "WEBP"}
    assert meta.inputs.max_image_pixels == 40_000_000
    listing = client.list_models()
    assert listing.default_model == "tiny"
    assert [m.name for m in listing.models] == ["tiny"] and listing.models[0] == meta


def test_staged_server_path_equals_predict_image(client, tiny_model_dir):
    """The server runs the stages one by one; the model's own predict_image
    signature must agree exactly for the same seed and mode."""
    import tensorflow as tf

    from model_ops.op_library import load_op_library

    load_op_library()
    model = tf.saved_model.load(str(tiny_model_dir))
    pixels = random_image(200, 240, seed=8)
    for mode, mode_id in (("sample", 0), ("top_k", 1)):
        response = client.predict(pixels, seed=21, mode=mode, n_patches=6)
        reference = model.signatures["predict_image"](
            image=tf.constant(pixels),
            n_patches=tf.constant(6),
            seed=tf.constant(21, tf.int64),
            mode=tf.constant(mode_id),
        )
        np.testing.assert_allclose(
            [p.probability for p in response.probabilities],
            reference["probabilities"].numpy(),
            rtol=1e-5,
            atol=1e-7,
        )
        np.testing.assert_array_equal([(p.y, p.x) for p in response.patches], reference["offsets"].numpy())
        np.testing.assert_array_equal(
            [(p.cell_y, p.cell_x) for p in response.patches], reference["cells"].numpy()
        )
        np.testing.assert_allclose(
            np.array(response.attention.values).reshape(25, 30), reference["attention"].numpy(), rtol=1e-5
        )


def test_concurrent_requests_get_their_own_answers(client):
    """Eight threads at once, each image and seed different: every answer equals
    the one the same request gets alone."""
    requests = [(random_image(96 + 16 * (i % 4), 128, seed=i), i) for i in range(16)]
    alone = [client.predict(pixels, seed=seed) for pixels, seed in requests]
    with futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda r: client.predict(r[0], seed=r[1]), requests))
    for a, b in zip(alone, together, strict=True):
        assert list(a.probabilities) == list(b.probabilities) and list(a.patches) == list(b.patches)


def test_reflection_describes_the_api(ats_server):
    with grpc.insecure_channel(ats_server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"ats.v1.AttentionSampling", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName("ats.v1.AttentionSampling").FindMethodByName("PredictStream")
        assert method.client_streaming and method.output_type.full_name == "ats.v1.PredictResponse"
        assert "tile" in pool.FindMessageTypeByName("ats.v1.PredictRequest").fields_by_name
