"""The pipeline in process: stops between stages when the caller is gone,
refuses bombs from the header, and takes any ImageSource (the plug for tile
references) with the same result as the in-memory one."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from model_ops.lowres import low_resolution_view
from service.errors import Cancelled, TooLarge, Unsupported
from service.models.servable import load_servable
from service.pipeline import decode, runner, sources
from service.pipeline.payload import RawTensor, TileRef
from tests.support import random_image

LIMITS = sources.SourceLimits(max_image_pixels=40_000_000, max_image_bytes=64 << 20)


def in_memory_sources() -> sources.SourceRegistry:
    return sources.SourceRegistry(LIMITS)


@pytest.fixture(scope="module")
def servable(tiny_model_dir):
    return load_servable("tiny", 1, tiny_model_dir)


def tensor(pixels: np.ndarray) -> RawTensor:
    return RawTensor(shape=pixels.shape, dtype="uint8", data=pixels.tobytes())


def stopping_before(stage: str, checkpoints: tuple[str, ...]):
    """An ``is_active`` that turns false at the check before ``stage``, and the checks it saw."""
    checked: list[int] = []

    def is_active() -> bool:
        checked.append(1)
        return len(checked) <= checkpoints.index(stage)

    return is_active, checked


@pytest.mark.parametrize("stop_before", runner.FUSED_CHECKS)
def test_a_decoded_image_stops_before_its_graph_once_the_caller_is_gone(servable, stop_before):
    is_active, checked = stopping_before(stop_before, runner.FUSED_CHECKS)
    with pytest.raises(Cancelled, match=f"before stage {stop_before}"):
        runner.run(
            servable,
            tensor(random_image(64, 64)),
            runner.PredictOptions(),
            in_memory_sources(),
            is_active,
        )
    assert len(checked) == runner.FUSED_CHECKS.index(stop_before) + 1  # nothing ran after the check failed


@pytest.mark.parametrize("stop_before", runner.STAGES)
def test_a_region_source_stops_between_stages_once_the_caller_is_gone(servable, stop_before):
    is_active, checked = stopping_before(stop_before, runner.STAGES)
    region_source = RegionSource(random_image(64, 64))
    registry = in_memory_sources()
    registry.register("tile", lambda payload, channels, limits: region_source)
    with pytest.raises(Cancelled, match=f"before stage {stop_before}"):
        runner.run(servable, TileRef("slide.tiff"), runner.PredictOptions(), registry, is_active)
    assert len(checked) == runner.STAGES.index(stop_before) + 1  # no stage ran after the check failed
    assert region_source.regions_read == (stop_before not in runner.STAGES[:5]) * servable.spec.n_patches


def test_real_decompression_bomb_is_refused_before_decoding():
    """144 MP of zeros in a ~150 KB PNG."""
    side = 12000
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + a row of zeros
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )
    assert len(png) < 1 << 20
    with pytest.raises(TooLarge, match="144000000 pixels"):
        decode.decode_image(png, 1, LIMITS.max_image_pixels, LIMITS.max_image_bytes)


def test_unregistered_source_kind_is_unsupported(servable):
    with pytest.raises(Unsupported, match="'tile' sources are not supported"):
        runner.run(servable, TileRef("a.tiff"), runner.PredictOptions(), in_memory_sources())


class RegionSource(sources.ImageSource):
    """Reads patches region by region, as a tiled reader would, and counts them."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        self.regions_read = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.pixels.shape

    def low_view(self, size: tuple[int, int]) -> tf.Tensor:
        return low_resolution_view(self.pixels[np.newaxis], size)

    def patches(self, offsets: tf.Tensor, patch_size: tuple[int, int]) -> tf.Tensor:
        ph, pw = patch_size
        pad = max(ph, pw)
        padded = np.pad(self.pixels, ((pad, pad), (pad, pad), (0, 0)))
        crops = []
        for y, x in offsets.numpy()[0]:
            self.regions_read += 1
            crops.append(padded[pad + y : pad + y + ph, pad + x : pad + x + pw])
        return tf.constant(np.stack(crops)[np.newaxis])


def test_a_registered_source_gives_the_in_memory_answer(servable):
    pixels = random_image(160, 200, seed=5)
    region_source = RegionSource(pixels)
    registry = in_memory_sources()
    registry.register("tile", lambda payload, channels, limits: region_source, formats=("TIFF",))
    options = runner.PredictOptions(n_patches=6, seed=13)
    from_tile = runner.run(servable, TileRef("slide.tiff"), options, registry)
    in_memory = runner.run(servable, tensor(pixels), options, registry)
    assert region_source.regions_read == 6
    np.testing.assert_array_equal(from_tile.offsets, in_memory.offsets)
    np.testing.assert_array_equal(from_tile.probabilities, in_memory.probabilities)
    assert registry.kinds() == ["image", "tensor", "tile"] and registry.formats("tile") == ("TIFF",)
    assert "tile" not in in_memory_sources().kinds()  # registries are per server, not global


def test_a_kind_cannot_be_registered_twice():
    registry = in_memory_sources()
    registry.register("tile", lambda payload, channels, limits: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("tile", lambda payload, channels, limits: None)
