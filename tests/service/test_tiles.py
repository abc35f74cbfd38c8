"""Tile readers against the in-memory path on the same pixels: the same low
view and the same patches, while reading only the tiles a region touches.

Exact equality of the low view holds when it is made from level 0, or from a
level made by the same area resampling whose size is the view's exactly (the
generator's pyramids are exact area means). Other levels lose detail the
view still had, so they are held to a bounded difference instead.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from model_ops.datasets.gigapixel_digits import coarse_view, gigapixel_spec, stored_coarse_view
from model_ops.datasets.megapixel_digits import CanvasSpec, make_layout, render_canvas
from model_ops.datasets.writers import write_jpeg, write_png, write_tiff
from service.errors import TooLarge
from service.pipeline.decode import decode_image
from service.pipeline.payload import TileRef
from service.pipeline.sources import InMemorySource, SourceLimits
from service.tiles import TileOpener
from service.tiles import source as source_module
from service.tiles.source import choose_level

LIMITS = SourceLimits(max_image_pixels=50_000_000, max_image_bytes=64 << 20)
PATCH = (50, 50)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A 1600x1600 and a 1500x1200 digit canvas as pyramidal TIFF, PNG and JPEG."""
    root = tmp_path_factory.mktemp("tiles")
    for name, (height, width) in {"square": (1600, 1600), "oblong": (1500, 1200)}.items():
        layout = make_layout(CanvasSpec(height=height, width=width), "test", 7, len(name))
        write_tiff(layout, root / f"{name}.tif", tile=256)
        write_png(layout, root / f"{name}.png")
        write_jpeg(layout, root / f"{name}.jpg")
        np.save(root / f"{name}.npy", render_canvas(layout))
    return root


def offsets_for(shape: tuple[int, int], n: int = 24, seed: int = 0) -> tf.Tensor:
    """Random top-left corners, some partly or wholly outside the image."""
    rng = np.random.default_rng(seed)
    ys = rng.integers(-80, shape[0] + 30, n)
    xs = rng.integers(-80, shape[1] + 30, n)
    return tf.constant(np.stack([ys, xs], axis=1)[np.newaxis], tf.int32)


def check_same(tile_source, memory: InMemorySource, view: tuple[int, int]) -> None:
    offsets = offsets_for(memory.shape[:2])
    assert tile_source.shape == memory.shape
    np.testing.assert_array_equal(tile_source.patches(offsets, PATCH), memory.patches(offsets, PATCH))
    np.testing.assert_array_equal(tile_source.low_view(view), memory.low_view(view))


@pytest.mark.parametrize("channels", [1, 3])
def test_tiff_level0_equals_in_memory(root: pathlib.Path, channels: int) -> None:
    pixels = np.load(root / "oblong.npy")
    memory = InMemorySource(np.repeat(pixels, channels, axis=-1))
    source = TileOpener(str(root), 32 << 20)(TileRef("oblong.tif", level=0), channels, LIMITS)
    check_same(source, memory, (180, 144))


def test_tiff_area_pyramid_level_of_the_views_size_equals_in_memory(root: pathlib.Path) -> None:
    source = TileOpener(str(root), 32 << 20)(TileRef("square.tif"), 1, LIMITS)
    assert source.level_for((200, 200)) == 3  # 1600 / 8: the level is the view
    check_same(source, InMemorySource(np.load(root / "square.npy")), (200, 200))


def test_tiff_coarser_level_is_close_and_reads_far_less(root: pathlib.Path) -> None:
    opener = TileOpener(str(root), 32 << 20)
    memory = InMemorySource(np.load(root / "oblong.npy"))
    source = opener(TileRef("oblong.tif"), 1, LIMITS)
    # 1500x1200 at 0.12 is 180x144: level 3 (188x150) has a partial last block
    # row, so the aligned level 2 (375x300) is used
    assert source.level_for((180, 144)) == 2
    view = source.low_view((180, 144)).numpy().astype(int)
    difference = np.abs(view - memory.low_view((180, 144)).numpy())
    assert difference.mean() < 0.25 and np.quantile(difference, 0.99) <= 4  # measured: 0.07 and 2
    level0 = opener(TileRef("oblong.tif", level=0), 1, LIMITS)
    level0.low_view((180, 144))
    assert source.read_stats.tiles_decoded == 4 < level0.read_stats.tiles_decoded == 6 * 5


def test_oversampled_view_reads_a_finer_level_and_is_closer_to_the_exact_view(tmp_path: pathlib.Path) -> None:
    """JPEG level tiles lose faint marks; a level twice the view's size, averaged
    down, is nearer the exact area view than the level of the view's own size."""
    layout = make_layout(CanvasSpec(height=1600, width=1600), "test", 7, 3)
    write_tiff(layout, tmp_path / "lossy.tif", tile=256, compression="jpeg")
    exact = InMemorySource(render_canvas(layout)).low_view((200, 200)).numpy().astype(float)
    errors = {}
    for oversample, level in ((1, 3), (2, 2), (4, 1)):
        source = TileOpener(str(tmp_path), 32 << 20, view_oversample=oversample)(
            TileRef("lossy.tif"), 1, LIMITS
        )
        assert source.level_for((200, 200)) == level
        errors[oversample] = np.abs(source.low_view((200, 200)).numpy() - exact).mean()
    assert errors[4] < errors[2] < errors[1]


@pytest.mark.parametrize("quality", [70, 95])
def test_a_stored_coarse_view_is_what_the_server_reads_from_jpeg_tiles(
    tmp_path: pathlib.Path, quality: int
) -> None:
    """The gigapixel recipe trains on ``stored_coarse_view``: it must be the
    server's view of the canvas written as JPEG tiles, pixel for pixel."""
    layout = make_layout(gigapixel_spec(4096), "test", 7, 1)
    write_tiff(layout, tmp_path / "slide.tif", tile=256, compression="jpeg", quality=quality)
    served = TileOpener(str(tmp_path), 32 << 20, view_oversample=4)(TileRef("slide.tif"), 1, LIMITS)
    view = served.low_view((64, 64)).numpy()[0, ..., 0]
    stored = stored_coarse_view(layout, quality)
    assert view.max() > 0 and np.array_equal(view, stored)
    assert not np.array_equal(stored, coarse_view(layout))  # the JPEG error it exists to show


def test_oversampling_stays_within_the_pixel_limits(
    root: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finer level over the server's pixel limit is not read: the view's own level is."""
    small = SourceLimits(max_image_pixels=400 * 400, max_image_bytes=64 << 20)
    opener = TileOpener(str(root), 32 << 20, view_oversample=4)
    assert opener(TileRef("square.tif"), 1, small).level_for((200, 200)) == 2  # 400x400
    assert opener(TileRef("square.tif"), 1, LIMITS).level_for((200, 200)) == 1  # 800x800
    tiny = SourceLimits(max_image_pixels=300 * 300, max_image_bytes=64 << 20)
    assert opener(TileRef("square.tif"), 1, tiny).level_for((200, 200)) == 3
    # a large view is not oversampled past OVERSAMPLED_PIXELS (a level could be a gigabyte)
    monkeypatch.setattr(source_module, "OVERSAMPLED_PIXELS", 500 * 500)
    assert opener(TileRef("square.tif"), 1, LIMITS).level_for((200, 200)) == 2  # 400x400
    assert opener(TileRef("square.tif"), 1, LIMITS).level_for((700, 700)) == 1  # its own level
    # an explicit level is the client's choice and is not oversampled
    assert opener(TileRef("square.tif", level=3), 1, LIMITS).level_for((200, 200)) == 3


def test_choose_level_prefers_the_nearest_aligned_level() -> None:
    levels = [(1500, 1200), (750, 600), (375, 300), (188, 150)]
    assert choose_level(levels, (180, 144)) == 2
    assert choose_level(levels, (376, 300)) == 1
    assert choose_level(levels, (1500, 1200)) == 0
    assert choose_level(levels, (3000, 10)) == 0  # nothing fits: full resolution
    # no aligned level but level 0 fits: the nearest unaligned one (an SVS-like pyramid)
    assert choose_level([(1001, 999), (500, 499), (125, 124)], (100, 100)) == 2
    assert choose_level([(1600, 1600), (800, 800), (400, 400)], (400, 400)) == 2


def test_level_hint_is_used_and_checked(root: pathlib.Path) -> None:
    opener = TileOpener(str(root), 32 << 20)
    source = opener(TileRef("square.tif", level=1), 1, LIMITS)
    assert source.level_for((200, 200)) == 1
    with pytest.raises(Exception, match="coarser than the model's low-resolution view") as info:
        opener(TileRef("square.tif", level=3), 1, LIMITS).low_view((400, 400))
    assert info.value.code == "INVALID_ARGUMENT" and info.value.field == "tile.level"


def test_patches_read_exactly_the_tiles_they_touch(root: pathlib.Path) -> None:
    opener = TileOpener(str(root), 32 << 20)
    source = opener(TileRef("square.tif"), 1, LIMITS)
    offsets = tf.constant([[[10, 10], [240, 240], [1590, 1590], [-60, 700], [800, 2000]]], tf.int32)
    source.patches(offsets, PATCH)
    # tiles (row, col) of 256 px: (0,0); (0..1, 0..1); (6,6); none; none
    touched = {(0, 0), (0, 1), (1, 0), (1, 1), (6, 6)}
    with tifffile.TiffFile(root / "square.tif") as tif:
        counts = tif.series[0].levels[0].keyframe.databytecounts
    stats = source.read_stats.as_dict()
    opened = stats["bytes_read"] - sum(counts[r * 7 + c] for r, c in touched)
    assert stats["tiles_decoded"] == stats["cache_misses"] == len(touched)
    assert stats["cache_hits"] == 1  # (0, 0) again for the second patch
    assert 0 < opened < 8192  # the rest is the structure tifffile parsed on open
    again = opener(TileRef("square.tif"), 1, LIMITS)
    again.patches(offsets, PATCH)
    assert again.read_stats.as_dict() == {
        "bytes_read": 0,
        "tiles_decoded": 0,
        "cache_hits": 6,
        "cache_misses": 0,
    }
    assert opener.totals.as_dict()["bytes_read"] == stats["bytes_read"]


def test_cache_budget_bounds_memory_and_rereads(root: pathlib.Path) -> None:
    opener = TileOpener(str(root), 3 * 256 * 256)  # three tiles
    source = opener(TileRef("square.tif", level=0), 1, LIMITS)
    source.low_view((200, 200))
    assert opener.cache.size_bytes <= 3 * 256 * 256 and len(opener.cache) < 49
    source.low_view((200, 200))
    assert source.read_stats.tiles_decoded == 2 * 49  # LRU over a scan: every tile again


def rgb_pyramid(path: pathlib.Path, ome: bool, compression: str) -> np.ndarray:
    """A random-texture RGB image with two area-halved SubIFD levels."""
    rng = np.random.default_rng(3)
    image = np.kron(rng.integers(0, 256, (75, 100, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    levels = [image, image[::2, ::2], image[::4, ::4]]
    with tifffile.TiffWriter(path, bigtiff=not ome, ome=ome) as tif:
        options = {"tile": (128, 128), "compression": compression, "photometric": "rgb"}
        tif.write(levels[0], subifds=2, **options)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)
    return image


@pytest.mark.parametrize("ome, compression", [(True, "zlib"), (False, "jpeg")])
def test_rgb_ome_and_bigtiff_pyramids_read_as_tifffile_decodes(
    tmp_path: pathlib.Path, ome: bool, compression: str
) -> None:
    rgb_pyramid(tmp_path / "image.tif", ome, compression)
    decoded = tifffile.imread(tmp_path / "image.tif")  # tifffile's own full decode
    opener = TileOpener(str(tmp_path), 32 << 20)
    source = opener(TileRef("image.tif", level=0), 3, LIMITS)
    assert source.format_name == ("OME-TIFF" if ome else "BIGTIFF")
    check_same(source, InMemorySource(decoded), (150, 200))
    gray = np.asarray(Image.fromarray(decoded).convert("L"))[..., np.newaxis]  # as the upload path converts
    check_same(opener(TileRef("image.tif", level=0), 1, LIMITS), InMemorySource(gray), (150, 200))
    assert opener(TileRef("image.tif"), 3, LIMITS).level_for((150, 200)) == 2


def test_png_equals_the_uploaded_file(root: pathlib.Path) -> None:
    for channels in (1, 3):
        uploaded = decode_image((root / "square.png").read_bytes(), channels, 10**9, 10**9)
        source = TileOpener(str(root), 32 << 20)(TileRef("square.png"), channels, LIMITS)
        assert source.format_name == "PNG"
        check_same(source, InMemorySource(uploaded), (200, 200))


def test_rgb_png_converts_to_gray_as_uploads_do(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    uploaded = decode_image((tmp_path / "rgb.png").read_bytes(), 1, 10**9, 10**9)
    check_same(
        TileOpener(str(tmp_path), 1 << 20)(TileRef("rgb.png"), 1, LIMITS), InMemorySource(uploaded), (37, 50)
    )


def test_jpeg_full_resolution_equals_upload_and_draft_view_is_close(root: pathlib.Path) -> None:
    uploaded = decode_image((root / "oblong.jpg").read_bytes(), 1, 10**9, 10**9)
    memory = InMemorySource(uploaded)
    opener = TileOpener(str(root), 32 << 20)
    check_same(opener(TileRef("oblong.jpg", level=0), 1, LIMITS), memory, (180, 144))
    drafted = opener(TileRef("oblong.jpg"), 1, LIMITS)
    assert drafted.level_for((180, 144)) == 2  # libjpeg's 1/4 scale (375x300)
    view = drafted.low_view((180, 144)).numpy().astype(int)
    difference = np.abs(view - memory.low_view((180, 144)).numpy())
    assert difference.mean() < 0.25 and np.quantile(difference, 0.99) <= 4  # measured: 0.07 and 2


def test_plain_images_over_the_limits_are_refused_before_decoding(root: pathlib.Path) -> None:
    opener = TileOpener(str(root), 1 << 20)
    with pytest.raises(TooLarge, match="pixels"):
        opener(TileRef("square.png"), 1, SourceLimits(1_000_000, 1 << 30))
    with pytest.raises(TooLarge, match="bytes"):
        opener(TileRef("square.jpg"), 1, SourceLimits(10**9, 1000))
    assert opener.totals.tiles_decoded == 0


def test_counters_follow_the_totals(root: pathlib.Path) -> None:
    from prometheus_client import CollectorRegistry

    from service.metrics import Metrics

    registry = CollectorRegistry()
    opener = TileOpener(str(root), 32 << 20, counters=Metrics(registry))
    for _ in range(2):
        source = opener(TileRef("square.tif"), 1, LIMITS)
        source.patches(offsets_for((1600, 1600)), PATCH)
    totals = opener.totals.as_dict()
    assert totals["cache_hits"] > 0 and totals["cache_misses"] > 0
    for field, metric in (
        ("bytes_read", "ats_tile_bytes_read_total"),
        ("tiles_decoded", "ats_tiles_decoded_total"),
        ("cache_hits", "ats_tile_cache_hits_total"),
        ("cache_misses", "ats_tile_cache_misses_total"),
    ):
        assert registry.get_sample_value(metric) == totals[field], field


def test_stripped_tiff_and_sparse_tiles(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (300, 250), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "strips.tif", image, rowsperstrip=7, compression="zlib")
    memory = InMemorySource(image[..., np.newaxis])
    check_same(TileOpener(str(tmp_path), 1 << 20)(TileRef("strips.tif"), 1, LIMITS), memory, (30, 25))
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:  # tiles never written are zeros
        tif.write(
            iter([np.full((64, 64), 9, np.uint8)] + [None] * 3),
            shape=(128, 128),
            dtype=np.uint8,
            tile=(64, 64),
        )
    (tmp_path / "sparse.tif").write_bytes(buffer.getvalue())
    source = TileOpener(str(tmp_path), 1 << 20)(TileRef("sparse.tif"), 1, LIMITS)
    crop = source.patches(tf.constant([[[32, 32]]], tf.int32), (64, 64)).numpy()[0, 0, ..., 0]
    assert (crop[:32, :32] == 9).all() and crop[32:].sum() == 0 and crop[:, 32:].sum() == 0


def test_16_bit_png_tile_keeps_its_high_byte_as_uploads_do(tmp_path: pathlib.Path) -> None:
    """A 16-bit grey PNG referenced by tile reads exactly as the same file
    uploaded: v >> 8, not clipped to 255."""
    values = (np.arange(64 * 80, dtype=np.uint32) * 16411 % 65536).astype(np.uint16).reshape(64, 80)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    (tmp_path / "deep.png").write_bytes(buffer.getvalue())
    source = TileOpener(str(tmp_path), 1 << 20)(TileRef("deep.png"), 1, LIMITS)
    patch = source.patches(tf.constant([[[0, 0]]], tf.int32), (64, 80)).numpy()[0, 0, ..., 0]
    assert np.array_equal(patch, (values >> 8).astype(np.uint8))
    uploaded = decode_image(buffer.getvalue(), 1, LIMITS.max_image_pixels, LIMITS.max_image_bytes)
    assert np.array_equal(patch, uploaded[..., 0])
