"""Two-level models end to end: a real ats-serve process with a random-weight
two-level model predicting pyramidal TIFF slides by reference, through the
real client (and an ats.v1 client built before two-level models existed)."""

from __future__ import annotations

import pathlib
import shutil

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image

from ats_api.v1 import attention_sampling_pb2 as pb
from ats_client import AtsClient, AtsError
from ats_client.cli import main as cli_main
from bench.common import ServerProcess
from tests.service.two_level_slides import TILE, glass_slide, texture, tile_byte_counts, write_slide
from tests.support import metric, scrape

pytestmark = pytest.mark.slow

SIDE = 4096
K, N = 3, 2  # the model's default regions and patches per region
REGION, PATCH = 256, 32
FINE_FACTOR = 4  # 1 / fine_scale: region views come from level 2
TISSUE = (512, 2560, 1024, 1024)  # top, left, height, width on the glass slide


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """(client, server, data root) of a server with a tiny two-level model and three slides."""
    from model_ops.two_level_export import export_tiny_two_level_model

    base = tmp_path_factory.mktemp("two-level")
    export_tiny_two_level_model(
        base / "repo" / "tiny-two-level" / "1",
        channels=1,
        low_scale=1 / 128,
        region_size=(REGION, REGION),
        fine_scale=1 / FINE_FACTOR,
        patch_size=(PATCH, PATCH),
        n_regions=K,
        n_patches=N,
    )
    root = base / "slides"
    root.mkdir()
    write_slide(root / "texture.tif", texture(SIDE))
    shutil.copy(root / "texture.tif", root / "cold.tif")  # another inode: its first read is cold
    write_slide(root / "glass.tif", glass_slide(SIDE, TISSUE))
    server = ServerProcess(
        base / "repo", base / "server.log", "--drain-delay", "0", "--data-root", str(root), "--http-port", "0"
    )
    try:
        server.wait_serving()
        with AtsClient(server.target, retries=0, timeout=60) as client:
            yield client, server, root
    finally:
        server.kill()


def grid(message: pb.AttentionMap) -> np.ndarray:
    return np.asarray(message.values, np.float32).reshape(message.height, message.width)


def cell_span(message: pb.AttentionMap, cell_y: int, cell_x: int) -> tuple[float, float, float, float]:
    """Full-resolution (top, left, bottom, right) of a map cell."""
    top = message.offset_y + cell_y * message.cell_height
    left = message.offset_x + cell_x * message.cell_width
    return top, left, top + message.cell_height, left + message.cell_width


def centre(box: pb.Patch | pb.Region) -> tuple[float, float]:
    return box.y + box.height / 2, box.x + box.width / 2


def test_metadata_reports_the_two_level_geometry(served, capsys) -> None:
    client, server, _ = served
    assert cli_main(["models", "--server", server.target]) == 0
    assert f"two-level: {K} regions (max 8) of {REGION}x{REGION} seen at 0.25" in capsys.readouterr().out
    meta = client.metadata()
    assert list(meta.two_level.region_size) == [REGION, REGION]
    assert list(meta.two_level.fine_view_size) == [REGION // FINE_FACTOR] * 2
    assert (meta.two_level.n_regions, meta.n_patches, list(meta.patch_size)) == (K, N, [PATCH, PATCH])
    assert meta.two_level.max_regions >= K and not meta.two_level.replace_regions


@pytest.mark.parametrize("mode", ["sample", "top_k"])
def test_response_is_consistent(served, mode: str) -> None:
    client, *_ = served
    response = client.predict_tile("texture.tif", seed=4, mode=mode)
    two = response.two_level
    assert (response.image_height, response.image_width) == (SIDE, SIDE)
    assert len(two.regions) == K and len(response.patches) == K * N
    coarse = grid(response.attention)
    assert coarse.shape == (32, 32) and coarse.sum() == pytest.approx(1, abs=1e-5)
    assert two.tissue_cells == coarse.size
    for region in two.regions:
        assert (region.height, region.width) == (REGION, REGION)
        assert all(0 <= c < SIDE for c in centre(region))
        assert region.probability == pytest.approx(coarse[region.cell_y, region.cell_x])
        top, left, bottom, right = cell_span(response.attention, region.cell_y, region.cell_x)
        assert top <= centre(region)[0] <= bottom and left <= centre(region)[1] <= right
        fine = grid(region.attention)
        assert fine.shape == (64, 64) and fine.sum() == pytest.approx(1, abs=1e-5)
        assert region.attention.cell_height * fine.shape[0] == REGION
    assert [p.region for p in response.patches] == [k for k in range(K) for _ in range(N)]
    for patch in response.patches:
        region = two.regions[patch.region]
        assert (patch.height, patch.width) == (PATCH, PATCH)
        assert patch.probability == pytest.approx(grid(region.attention)[patch.cell_y, patch.cell_x])
        y, x = centre(patch)
        assert region.y <= y <= region.y + REGION and region.x <= x <= region.x + REGION
        top, left, bottom, right = cell_span(region.attention, patch.cell_y, patch.cell_x)
        assert top <= y <= bottom and left <= x <= right
    stages = [t.stage for t in response.timings]
    assert stages[:3] == ["decode", "coarse", "coarse_attention"] and "tissue" not in stages
    assert {"regions", "region_views", "fine_attention", "sampling", "extract", "features"} <= set(stages)
    again = client.predict_tile("texture.tif", seed=4, mode=mode)
    assert [(p.y, p.x) for p in again.patches] == [(p.y, p.x) for p in response.patches]


def touched(top: int, left: int, size: int, level_side: int) -> set[tuple[int, int]]:
    """Tiles of a level of ``level_side`` pixels that a box touches (clipped to the level)."""
    rows = range(max(top, 0) // TILE, (min(top + size, level_side) - 1) // TILE + 1)
    cols = range(max(left, 0) // TILE, (min(left + size, level_side) - 1) // TILE + 1)
    return {(r, c) for r in rows for c in cols}


def test_reads_one_coarse_level_the_regions_and_the_patches_only(served) -> None:
    client, server, root = served
    before = scrape(server.metrics_url)
    response = client.predict_tile("cold.tif", seed=9)
    after = scrape(server.metrics_url)
    fine_side = SIDE // FINE_FACTOR
    region_tiles = set().union(
        *(
            touched(round(r.y / FINE_FACTOR), round(r.x / FINE_FACTOR), REGION // FINE_FACTOR, fine_side)
            for r in response.two_level.regions
        )
    )
    patch_tiles = set().union(*(touched(p.y, p.x, PATCH, SIDE) for p in response.patches))
    # the coarse view (32 px) comes from the one-tile 256 px level 4
    decoded = metric(after, "ats_tiles_decoded_total") - metric(before, "ats_tiles_decoded_total")
    assert decoded == 1 + len(region_tiles) + len(patch_tiles)
    counts = tile_byte_counts(root / "cold.tif")
    tile_bytes = (
        counts[4].sum() + sum(counts[2][t] for t in region_tiles) + sum(counts[0][t] for t in patch_tiles)
    )
    structure = (root / "cold.tif").stat().st_size - sum(int(c.sum()) for c in counts)
    read = metric(after, "ats_tile_bytes_read_total") - metric(before, "ats_tile_bytes_read_total")
    # plus the structure: its head sniffed for the format, then parsed
    assert tile_bytes <= read <= tile_bytes + 2 * structure
    assert read < 0.05 * (root / "cold.tif").stat().st_size  # a dozen of its 341 tiles


def test_tissue_mask_keeps_regions_off_the_glass(served) -> None:
    client, *_ = served
    top, left, height, width = TISSUE
    for seed in range(4):
        for mode in ("sample", "top_k"):
            response = client.predict_tile("glass.tif", seed=seed, mode=mode, tissue_mask="otsu")
            coarse = grid(response.attention)
            assert coarse.sum() == pytest.approx(1, abs=1e-5)
            kept = response.two_level.tissue_cells
            assert 0 < kept < coarse.size // 8 and np.count_nonzero(coarse) == kept
            assert "tissue" in [t.stage for t in response.timings]
            for region in response.two_level.regions:
                assert coarse[region.cell_y, region.cell_x] > 0
                y, x = centre(region)
                step = response.attention.cell_height  # a cell touching the tissue is tissue
                assert top - step <= y <= top + height + step and left - step <= x <= left + width + step
    unmasked = client.predict_tile("glass.tif", seed=0)
    assert np.count_nonzero(grid(unmasked.attention)) == unmasked.two_level.tissue_cells == 32 * 32


def test_uploaded_pixels_run_the_same_two_levels(served) -> None:
    client, *_ = served
    response = client.predict(texture(1024, seed=3), seed=2, n_regions=2, n_patches=3)
    assert len(response.two_level.regions) == 2 and len(response.patches) == 6
    assert grid(response.attention).shape == (8, 8)


def test_coarse_view_and_slide_overlay(served, tmp_path: pathlib.Path, capsys) -> None:
    client, server, _ = served
    response = client.predict_tile("glass.tif", seed=1, coarse_view=True)
    view = response.two_level.coarse_view
    assert list(view.shape) == [32, 32, 1] and len(view.data) == 32 * 32
    out = tmp_path / "overlay.png"
    code = cli_main(
        [
            "predict",
            "glass.tif",
            "--tile",
            "--server",
            server.target,
            "--tissue-mask",
            "otsu",
            "--overlay",
            str(out),
        ]
    )
    assert code == 0 and "overlay written" in capsys.readouterr().out
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert picture.shape[0] >= 512 and picture.shape[0] == picture.shape[1]
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert (0, 160, 255) in colours and (0, 255, 0) in colours  # region and patch boxes
    red = (picture[..., 0] - picture[..., 1]) > 40  # the heat map tints the tissue
    assert red.any() and not red.all()


def v1_before_two_level():
    """Message classes of ats.v1 as published before two-level models: the current
    file without the fields, messages and enum added for them."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    proto.name = "ats_api/v1/attention_sampling_before_two_level.proto"
    added_fields = {
        "PredictRequest": {10, 11},
        "OutputOptions": {3},
        "Patch": {9},
        "PredictResponse": {13},
        "ModelMetadata": {13},
    }
    for message in proto.message_type:
        kept = [f for f in message.field if f.number not in added_fields.get(message.name, ())]
        del message.field[:]
        message.field.extend(kept)
        if message.name == "Patch":
            del message.oneof_decl[:]  # the synthetic oneof of ``optional region``
    for name in ("Region", "TwoLevelResult", "TwoLevelGeometry"):
        proto.message_type.remove(next(m for m in proto.message_type if m.name == name))
    proto.enum_type.remove(next(e for e in proto.enum_type if e.name == "TissueMask"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ats.v1.{name}"))


def test_an_old_client_still_works(served) -> None:
    client, server, _ = served
    old = v1_before_two_level()
    request = old("PredictRequest")(seed=7, output=old("OutputOptions")(include_attention_map=True))
    request.tile.path = "texture.tif"
    with grpc.insecure_channel(server.target) as channel:
        predict = channel.unary_unary(
            "/ats.v1.AttentionSampling/Predict",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=old("PredictResponse").FromString,
        )
        answer = predict(request, timeout=60)
        metadata = channel.unary_unary(
            "/ats.v1.AttentionSampling/GetModelMetadata",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=old("ModelMetadata").FromString,
        )(old("GetModelMetadataRequest")(), timeout=60)
    current = client.predict_tile("texture.tif", seed=7)
    assert answer.label == current.label and metadata.n_patches == N
    assert [(p.x, p.y, p.width) for p in answer.patches] == [(p.x, p.y, p.width) for p in current.patches]
    assert (answer.attention.height, answer.attention.width) == (32, 32)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"n_regions": 9}, "n_regions"),  # the model's max_regions is 8
        ({"n_regions": -1}, "n_regions"),
        ({"n_patches": 17}, "n_patches"),  # max_patches 16
        ({"tissue_mask": 7}, "tissue_mask"),  # an enum value this server does not know
        ({"mode": 5}, "mode"),
    ],
)
def test_hostile_values_are_invalid_argument(served, change: dict, field: str) -> None:
    client, *_ = served
    request = pb.PredictRequest(**change)
    request.tile.path = "texture.tif"
    with pytest.raises(AtsError) as refused:
        client.send(request)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in refused.value.fields
