"""imagecodecs decodes what Pillow would, to the same pixels, and refuses what
Pillow would refuse, with the same status (service/pipeline/codecs.py).

The reference is ``decode_image`` with Pillow decoding every file, as it did
before imagecodecs (``codecs.DECODERS`` emptied); images are encoded by
Pillow and tifffile from NumPy pixels."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from unittest import mock

import numpy as np
import pytest
import tifffile
from PIL import Image

from service.errors import InvalidInput, TooLarge
from service.pipeline import codecs, decode
from tests.fuzz import apply, header_forgeries, mutate
from tests.fuzz.atheris_decode import MAX_BYTES, MAX_PIXELS, picture, seeds

MUTATIONS = 1500


def pixels_or_status(data: bytes, channels: int) -> np.ndarray | str:
    try:
        return decode.decode_image(data, channels, MAX_PIXELS, MAX_BYTES)
    except (InvalidInput, TooLarge) as err:
        return err.code.value


def by_pillow(data: bytes, channels: int) -> np.ndarray | str:
    with mock.patch.dict(codecs.DECODERS, clear=True):
        return pixels_or_status(data, channels)


def uses_imagecodecs(data: bytes, channels: int) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        return codecs.samples(image, data, channels) is not None


def assert_same(data: bytes, channels: int, label: str) -> None:
    got, want = pixels_or_status(data, channels), by_pillow(data, channels)
    if isinstance(want, str) or isinstance(got, str):
        shapes = [r if isinstance(r, str) else r.shape for r in (want, got)]
        assert isinstance(want, str) and isinstance(got, str) and got == want, (label, channels, *shapes)
    else:
        assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape, (label, channels)
        np.testing.assert_array_equal(got, want, err_msg=f"{label} ({channels} channels)")


def image_of(mode: str) -> Image.Image:
    """A 60x80 picture in ``mode``, alpha with fully transparent pixels that keep their colour."""
    rgb = picture(60, 80)
    rgb[::7] ^= np.uint8(0x5A)  # detail every few rows, across the conversion bands
    alpha = np.tile(np.arange(80, dtype=np.uint8) * 3, (60, 1))
    alpha[:, :10] = 0
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, alpha]))
    if mode == "LA":
        return Image.fromarray(np.dstack([rgb[..., 0], alpha]))
    if mode == "I;16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257 + rgb[..., 1] // 3)
    return Image.fromarray(rgb).convert(mode)


def pillow_file(mode: str, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image_of(mode).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def tifffile_file(mode: str, **options: object) -> bytes:
    pixels = np.asarray(image_of(mode))
    buffer = io.BytesIO()
    bands = pixels.shape[2] if pixels.ndim == 3 else 1
    alpha = {"extrasamples": ("unassalpha",)} if bands in (2, 4) else {}
    photometric = "rgb" if bands >= 3 else "minisblack"
    tifffile.imwrite(buffer, pixels, photometric=photometric, planarconfig="contig", **alpha, **options)
    return buffer.getvalue()


LOSSLESS_MODES = ("L", "LA", "RGB", "RGBA", "P", "I;16", "1")
# (name, writer of a file in a mode, modes whose files imagecodecs decodes for a 3-channel model)
LOSSLESS: list[tuple[str, Callable[[str], bytes], tuple[str, ...]]] = [
    ("PNG", lambda mode: pillow_file(mode, "PNG"), ("L", "LA", "RGB", "RGBA", "I;16")),
    (
        "interlaced PNG",
        lambda mode: pillow_file(mode, "PNG", interlace=1),
        ("L", "LA", "RGB", "RGBA", "I;16"),
    ),
    (
        "LZW TIFF",
        lambda mode: pillow_file(mode, "TIFF", compression="tiff_lzw"),
        ("L", "LA", "RGB", "RGBA", "I;16"),
    ),
    (
        "deflate TIFF",
        lambda mode: pillow_file(mode, "TIFF", compression="tiff_adobe_deflate"),
        ("L", "LA", "RGB", "RGBA", "I;16"),
    ),
    ("uncompressed TIFF", lambda mode: pillow_file(mode, "TIFF"), ()),  # Pillow reads raw strips itself
    ("lossless WebP", lambda mode: pillow_file(mode, "WEBP", lossless=True, exact=True), LOSSLESS_MODES),
]
TIFFFILE: list[tuple[str, dict[str, object]]] = [
    ("tiled deflate TIFF (tifffile)", {"tile": (16, 16), "compression": "zlib"}),
    (
        "deflate TIFF with a predictor, 7-row strips (tifffile)",
        {"compression": "zlib", "predictor": True, "rowsperstrip": 7},
    ),
]


@pytest.fixture(autouse=True)
def small_bands(monkeypatch):
    """Conversions in bands of a few rows, so every image here crosses several."""
    monkeypatch.setattr(decode, "_BAND_PIXELS", 7 * 80)


@pytest.mark.parametrize("mode", LOSSLESS_MODES)
@pytest.mark.parametrize(("name", "write", "fast_modes"), LOSSLESS, ids=[case[0] for case in LOSSLESS])
def test_lossless_files_decode_to_pillows_pixels(name, write, fast_modes, mode):
    data = write(mode)
    assert uses_imagecodecs(data, 3) == (mode in fast_modes), (name, mode)
    for channels in (1, 3):
        assert_same(data, channels, f"{name} {mode}")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize(("name", "options"), TIFFFILE, ids=[case[0] for case in TIFFFILE])
def test_tifffile_layouts_decode_to_pillows_pixels(name, options, mode):
    data = tifffile_file(mode, **options)
    assert uses_imagecodecs(data, 3), (name, mode)
    for channels in (1, 3):
        assert_same(data, channels, f"{name} {mode}")


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize(
    "options", [{"quality": 90}, {"quality": 75, "progressive": True}, {"subsampling": 0}]
)
def test_jpegs_decode_to_pillows_pixels(mode, options):
    """The same libjpeg-turbo release in both: not one pixel may differ."""
    data = pillow_file(mode, "JPEG", **options)
    assert uses_imagecodecs(data, 3)
    assert uses_imagecodecs(data, 1) == (mode == "L")  # colour to grey: Pillow converts faster
    for channels in (1, 3):
        assert_same(data, channels, f"JPEG {mode} {options}")


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_lossy_webp_decodes_to_pillows_pixels(mode):
    data = pillow_file(mode, "WEBP", quality=80)
    assert uses_imagecodecs(data, 1)
    for channels in (1, 3):
        assert_same(data, channels, f"lossy WebP {mode}")


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3), ("RGBA", 3), ("RGB", 1), ("L", 3)])
def test_decoded_arrays_are_what_tensorflow_adopts_without_a_copy(mode, channels):
    """Writable, C-contiguous, aligned: InMemorySource hands them to TensorFlow as they are."""
    pixels = decode.decode_image(pillow_file(mode, "PNG"), channels, MAX_PIXELS, MAX_BYTES)
    assert pixels.shape == (60, 80, channels)
    assert pixels.flags.writeable and pixels.flags.c_contiguous
    assert pixels.ctypes.data % codecs.ALIGNMENT == 0


FAST_SEEDS = {
    name: data
    for name, data in seeds().items()
    if any(uses_imagecodecs(data, channels) for channels in (1, 3))
}


def test_the_seeds_reach_imagecodecs():
    assert {name.split("-")[0] for name in FAST_SEEDS} >= {"png", "jpeg", "tiff", "webp", "bigtiff"}, sorted(
        FAST_SEEDS
    )


def test_damaged_files_are_refused_as_pillow_refuses_them():
    """Random damage, every cut and every header forgery of the files imagecodecs
    decodes: the same pixels or the same status, for both model widths."""
    rng = random.Random(13)
    names = sorted(FAST_SEEDS)
    cases = [(f"mutation {i}", mutate(FAST_SEEDS[names[i % len(names)]], rng)) for i in range(MUTATIONS)]
    for name, data in FAST_SEEDS.items():
        cases += [
            (f"{name} cut to {cut}", data[:cut]) for cut in range(0, len(data), max(1, len(data) // 64))
        ]
        cases += [
            (f"{name} {new.hex()} at {at}", apply(data, (at, new))) for at, new in header_forgeries(data)
        ]
    for label, data in cases:
        for channels in (1, 3):
            assert_same(data, channels, label)


@pytest.mark.parametrize(
    ("label", "damage"),
    [
        ("a JPEG cut before its end", lambda data: data[: len(data) * 2 // 3]),
        ("a PNG whose IEND became another chunk", lambda data: data[:-12] + b"\0\0\x7f\0DATx" + data[-4:]),
    ],
)
def test_files_libraries_finish_but_pillow_refuses(label, damage):
    """libjpeg fills a cut JPEG with grey and libpng stops at the image data: Pillow refuses both."""
    source = pillow_file("RGB", "JPEG" if "JPEG" in label else "PNG")
    data = damage(source)
    assert by_pillow(data, 3) == "INVALID_ARGUMENT"
    assert pixels_or_status(data, 3) == "INVALID_ARGUMENT"
