"""DICOM whole-slide images as tile references: real series written with
pydicom, read through the tile opener (levels, pixel sizes, exact pixels of
raw frames, JPEG within its loss), refusals of hostile series without a
leaked descriptor, and a real server predicting from a series directory as
from the uploaded pixels."""

from __future__ import annotations

import gc
import io
import os
import pathlib
import shutil
import time
from collections import Counter

import numpy as np
import pydicom
import pytest
import tensorflow as tf
from PIL import Image
from prometheus_client import CollectorRegistry
from pydicom.encaps import encapsulate

from ats_client import AtsClient
from service.config import Config
from service.errors import Code, ServiceError
from service.pipeline.payload import TileRef
from service.pipeline.sources import SourceLimits
from service.tiles import TileOpener
from service.tiles.readers.dicom import MAX_FRAMES
from tests.service.dicom_slides import frames_of, write_series
from tests.service.test_tiles_hostile import open_fds, race, swapping, wait_for_fds
from tests.support import TINY_MODEL, free_port

LIMITS = SourceLimits(max_image_pixels=10_000_000, max_image_bytes=10 << 20)


def smooth(height: int, width: int) -> np.ndarray:
    """Gradients JPEG keeps within a few grey levels (noise it would not)."""
    yy, xx = np.mgrid[:height, :width]
    return np.stack([yy * 255 // height, xx * 255 // width, (yy + xx) * 255 // (height + width)], -1).astype(
        np.uint8
    )


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp("dicom")
    rng = np.random.default_rng(0)
    made = {
        "raw": write_series(root / "raw", rng.integers(0, 256, (300, 420, 3), np.uint8), levels=3, tile=64),
        "gray": write_series(root / "gray", rng.integers(0, 256, (130, 97, 1), np.uint8), levels=2, tile=48),
        "jpeg": write_series(root / "jpeg", smooth(260, 330), levels=2, tile=64, codec="jpeg"),
        "jpeg2000": write_series(
            root / "jpeg2000", rng.integers(0, 256, (100, 150, 3), np.uint8), tile=32, codec="jpeg2000"
        ),
        "nompp": write_series(
            root / "nompp", rng.integers(0, 256, (80, 80, 3), np.uint8), levels=2, mpp=None
        ),
    }
    return root, made


def region(pixels: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The region as a reader must return it: zeros outside the image."""
    out = np.zeros((height, width, pixels.shape[2]), np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    part = pixels[y0 : top + height, x0 : left + width]
    out[y0 - top : y0 - top + part.shape[0], x0 - left : x0 - left + part.shape[1]] = part
    return out


REGIONS = [(0, 0, 40, 50), (-7, 13, 90, 130), (60, 100, 64, 64), (250, 380, 80, 80), (1000, 1000, 8, 8)]


@pytest.mark.parametrize("name", ["raw", "gray", "jpeg", "jpeg2000"])
def test_series_levels_read_as_written(slides, name: str) -> None:
    root, made = slides
    opener = TileOpener(str(root), 1 << 24)
    source = opener(TileRef(name + "/"), made[name][0].shape[2], LIMITS)
    reader = source._reader
    assert reader.format_name == "DICOM"
    assert reader.level_shapes == [level.shape[:2] for level in made[name]]
    for index, level in enumerate(made[name]):
        for top, left, height, width in REGIONS:
            got = reader.read(index, top, left, height, width, level.shape[2], source._recorder)
            expected = region(level, top, left, height, width)
            if name == "jpeg":  # lossy: small on smooth pixels, larger where a frame meets its padding
                error = np.abs(got.astype(int) - expected)
                assert error.mean() < 1.5 and np.percentile(error, 99) <= 6 and error.max() <= 24
            else:
                np.testing.assert_array_equal(got, expected)
    stats = source.read_stats
    assert stats.tiles_decoded > 0 and stats.bytes_read > 0


def test_raw_level_bytes_read_are_the_frames_touched(slides) -> None:
    root, _ = slides
    source = TileOpener(str(root), 1 << 24)(TileRef("raw"), 3, LIMITS)
    opened = source.read_stats.bytes_read
    source._reader.read(0, 70, 70, 40, 40, 3, source._recorder)  # inside frame (1, 1) only
    assert source.read_stats.tiles_decoded == 1
    assert 64 * 64 * 3 <= source.read_stats.bytes_read - opened < 64 * 64 * 3 + 4096


def test_pixel_sizes_and_level_choice_by_microns_per_pixel(slides) -> None:
    root, _ = slides
    opener = TileOpener(str(root), 1 << 24)
    reader = opener(TileRef("raw"), 3, LIMITS)._reader
    assert [reader.mpp(level) for level in range(3)] == [(0.25, 0.25), (0.5, 0.5), (1.0, 1.0)]
    assert [reader.level_for_mpp(mpp) for mpp in (0.1, 0.25, 0.3, 0.5, 0.99, 1.0, 8.0)] == [
        0,
        0,
        0,
        1,
        1,
        2,
        2,
    ]


def test_one_instance_file_is_a_pyramid_of_its_level(slides) -> None:
    root, made = slides
    source = TileOpener(str(root), 1 << 24)(TileRef("raw/level1.dcm"), 3, LIMITS)
    assert source._reader.level_shapes == [made["raw"][1].shape[:2]]
    assert source._reader.mpp(0) == (0.5, 0.5)
    np.testing.assert_array_equal(source._reader.read(0, 0, 0, 150, 210, 3, source._recorder), made["raw"][1])


def test_patches_and_low_view_come_from_the_levels(slides) -> None:
    root, made = slides
    source = TileOpener(str(root), 1 << 24)(TileRef("raw"), 3, LIMITS)
    offsets = tf.constant([[[-5, 10], [200, 300]]], tf.int32)
    patches = source.patches(offsets, (32, 40)).numpy()[0]
    np.testing.assert_array_equal(patches[0], region(made["raw"][0], -5, 10, 32, 40))
    np.testing.assert_array_equal(patches[1], region(made["raw"][0], 200, 300, 32, 40))
    assert source.level_for((75, 105)) == 2
    assert source.low_view((75, 105)).shape == (1, 75, 105, 3)


def copy_series(root: pathlib.Path, name: str, source: pathlib.Path) -> pathlib.Path:
    shutil.copytree(source, root / name)
    return root / name


def rewrite(path: pathlib.Path, **values: object) -> None:
    dataset = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path)


def hostile_series(root: pathlib.Path, outside: pathlib.Path, good: pathlib.Path) -> dict[str, Code]:
    """Series a server must refuse, under ``root``; name -> the status each gets."""
    cases: dict[str, Code] = {}

    def case(name: str, code: Code = Code.INVALID_ARGUMENT) -> pathlib.Path:
        cases[name] = code
        return copy_series(root, name, good)

    data = (case("truncated") / "level0.dcm").read_bytes()
    (root / "truncated" / "level0.dcm").write_bytes(data[: len(data) // 2])
    rewrite(case("frames_miscounted") / "level1.dcm", NumberOfFrames=5)
    rewrite(
        case("huge_matrix") / "level0.dcm", TotalPixelMatrixRows=2_000_000_000, TotalPixelMatrixColumns=40_000
    )
    rewrite(case("huge_frames") / "level0.dcm", Rows=65535, Columns=65535)
    rewrite(case("zero_tile") / "level0.dcm", Rows=0)
    rewrite(case("sparse") / "level2.dcm", DimensionOrganizationType="TILED_SPARSE")
    rewrite(case("sixteen_bits") / "level0.dcm", BitsAllocated=16)
    write_series(root / "no_pixel_spacing", np.zeros((80, 80, 3), np.uint8), levels=2, mpp=None)
    cases["no_pixel_spacing"] = Code.INVALID_ARGUMENT  # wsidicom places levels by their spacing
    two = case("two_series")
    rewrite(two / "level2.dcm", SeriesInstanceUID=pydicom.uid.generate_uid())
    unserved = (
        case("unserved_syntax") / "level1.dcm"
    )  # explicit VR big endian: a syntax UID of the same length
    unserved.write_bytes(unserved.read_bytes().replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0", 1))
    # compressed frames: more fragments than frames, and a frame announcing gigapixels
    encoded = [encode_jpeg(frame) for frame in frames_of(np.zeros((64, 128, 3), np.uint8), 64)]
    fragments = case("extra_fragments")
    dataset = jpeg_level(fragments / "level0.dcm", encapsulate([*encoded, encoded[0]], has_bot=False))
    dataset.save_as(fragments / "level0.dcm")
    escape = root / "escape"
    escape.mkdir()
    shutil.copy(good / "level0.dcm", outside / "secret.dcm")
    os.symlink(outside / "secret.dcm", escape / "level0.dcm")  # ignored: not followed
    (escape / "sub").mkdir()
    shutil.copy(good / "level1.dcm", escape / "sub" / "level1.dcm")  # ignored: not directly in it
    cases["escape"] = Code.INVALID_ARGUMENT  # nothing left: no whole-slide image
    os.symlink(os.path.relpath(outside, root), root / "outside_series")
    cases["outside_series"] = Code.PERMISSION_DENIED
    cases["no_such_series/"] = Code.NOT_FOUND
    return cases


def encode_jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG")
    return buffer.getvalue()


def jpeg_level(path: pathlib.Path, pixel_data: bytes) -> pydicom.Dataset:
    """The level at ``path`` made a 64x128 image of two JPEG frames with ``pixel_data``."""
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    dataset.TotalPixelMatrixRows, dataset.TotalPixelMatrixColumns, dataset.NumberOfFrames = 64, 128, 2
    dataset.PhotometricInterpretation = "YBR_FULL_422"
    dataset.PixelData = pixel_data
    dataset["PixelData"].VR = "OB"
    return dataset


@pytest.fixture()
def hostile(tmp_path: pathlib.Path, slides) -> tuple[TileOpener, dict[str, Code]]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    good = copy_series(root, "good", slides[0] / "raw")
    return TileOpener(str(root), 1 << 22), hostile_series(root, outside, good)


def refusal(opener: TileOpener, path: str) -> Code | None:
    try:
        source = opener(TileRef(path), 3, LIMITS)
        source.patches(tf.constant([[[0, 0], [130, 300]]], tf.int32), (16, 16))
    except ServiceError as err:
        return err.code
    return None


def test_hostile_series_are_documented_refusals_and_leak_no_descriptor(hostile) -> None:
    opener, cases = hostile
    assert refusal(opener, "good") is None
    for path, code in cases.items():
        assert refusal(opener, path) == code, path
    gc.collect()
    before = open_fds()
    for _ in range(5):
        for path in cases:
            refusal(opener, path)
    assert sorted(wait_for_fds("self", len(before))) == sorted(before)


def test_frame_count_limit_is_checked_before_anything_is_allocated(hostile) -> None:
    opener, _ = hostile
    root = pathlib.Path(opener.root.path)
    series = copy_series(root, "many_frames", root / "good")
    side = 16 * (int(MAX_FRAMES**0.5) + 1)  # one frame more per row and column than the limit allows
    rewrite(
        series / "level0.dcm", Rows=16, Columns=16, TotalPixelMatrixRows=side, TotalPixelMatrixColumns=side
    )
    started = time.monotonic()
    assert refusal(opener, "many_frames") == Code.INVALID_ARGUMENT
    assert time.monotonic() - started < 5


def test_a_frame_announcing_more_pixels_than_the_frame_is_refused_before_decoding(hostile) -> None:
    opener, _ = hostile
    root = pathlib.Path(opener.root.path)
    series = copy_series(root, "announcing", root / "good")
    for name in ("level1.dcm", "level2.dcm"):
        (series / name).unlink()
    frame = bytearray(encode_jpeg(np.zeros((64, 64, 3), np.uint8)))
    at = next(i for i in range(len(frame)) if frame[i] == 0xFF and frame[i + 1] == 0xC0)
    frame[at + 5 : at + 9] = (60000).to_bytes(2, "big") * 2  # SOF0 height, width
    jpeg_level(series / "level0.dcm", encapsulate([bytes(frame)] * 2, has_bot=True)).save_as(
        series / "level0.dcm"
    )
    with pytest.raises(ServiceError, match="announces") as info:
        opener(TileRef("announcing"), 3, LIMITS).patches(tf.constant([[[0, 0]]], tf.int32), (8, 8))
    assert info.value.code == Code.INVALID_ARGUMENT


INSIDE, OUTSIDE = 17, 230  # the pixels of the series inside the root and of the one outside


def swap_request(opener: TileOpener, path: str) -> str:
    """'inside', 'OUTSIDE' or the status of a request for ``path`` while names are swapped."""
    try:
        source = opener(TileRef(path), 3, LIMITS)
        pixels = source.patches(tf.constant([[[0, 0]]], tf.int32), (8, 8)).numpy()
    except ServiceError as err:
        return err.code.value
    return "inside" if source.shape[:2] == (32, 48) and (pixels == INSIDE).all() else "OUTSIDE"


def test_a_series_directory_swapped_with_a_link_outside_never_reads_outside(tmp_path: pathlib.Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_series(root / "d", np.full((32, 48, 3), INSIDE, np.uint8), levels=1, tile=16)
    write_series(outside, np.full((48, 32, 3), OUTSIDE, np.uint8), levels=1, tile=16)
    (root / "swap").symlink_to(os.path.relpath(outside, root))
    opener = TileOpener(str(root), 1 << 20)
    with swapping(root):
        outcomes = race(lambda: swap_request(opener, "d"), minimum=200)
    assert set(outcomes) <= {"inside", "PERMISSION_DENIED"}, outcomes
    assert min(outcomes["inside"], outcomes["PERMISSION_DENIED"]) >= 10, outcomes  # met both ways


def test_a_level_file_swapped_with_a_link_outside_is_never_followed(tmp_path: pathlib.Path) -> None:
    """Inside the series directory, ``d`` (a level) and ``swap`` (a symlink to a level
    outside) trade names non-stop: whichever name the listing meets, only the file is read."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_series(root / "series", np.full((32, 48, 3), INSIDE, np.uint8), levels=1, tile=16)
    (root / "series" / "level0.dcm").rename(root / "series" / "d")
    write_series(outside, np.full((48, 32, 3), OUTSIDE, np.uint8), levels=1, tile=16)
    (root / "series" / "swap").symlink_to(outside / "level0.dcm")
    opener = TileOpener(str(root), 1 << 20)
    with swapping(root / "series"):
        outcomes = Counter(swap_request(opener, "series") for _ in range(150))
    # INVALID_ARGUMENT: both names were links when opened (no level left)
    assert set(outcomes) <= {"inside", "INVALID_ARGUMENT"}, outcomes
    assert outcomes["inside"] >= 75, outcomes


@pytest.mark.slow
def test_a_server_predicts_from_a_series_as_from_the_uploaded_pixels(
    tmp_path: pathlib.Path, tiny_model_dir: pathlib.Path, slides
) -> None:
    from service.server.app import Server

    repository = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, repository / TINY_MODEL / "1")
    root, made = slides
    config = Config(
        model_repository=str(repository),
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
        http_port=0,
        poll_interval=0,
        drain_delay=0,
        grace_period=5,
        data_root=str(root),
    )
    server = Server(config, CollectorRegistry())
    server.start()
    try:
        with AtsClient(f"127.0.0.1:{server.port}", retries=0, timeout=60) as client:
            for _ in range(600):
                if client.health() == "SERVING":
                    break
                time.sleep(0.2)
            assert "DICOM" in client.metadata().inputs.tile_formats
            uploaded = client.predict(made["raw"][0], seed=4, n_patches=5)
            referenced = client.predict_tile("raw", level=0, seed=4, n_patches=5)
            assert (referenced.image_height, referenced.image_width) == (300, 420)
            assert [(p.y, p.x) for p in referenced.patches] == [(p.y, p.x) for p in uploaded.patches]
            np.testing.assert_array_equal(referenced.attention.values, uploaded.attention.values)
            np.testing.assert_allclose(
                [p.probability for p in referenced.probabilities],
                [p.probability for p in uploaded.probabilities],
                rtol=1e-6,
            )
    finally:
        server.drain()
