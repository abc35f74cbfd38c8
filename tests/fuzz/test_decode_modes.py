"""Pixel values after decoding, exactly, for the bit depths and modes the
fuzz seeds cover: 16-bit samples keep their high byte (``v >> 8``) in grey
and colour PNGs and TIFFs alike, 32-bit and floating-point images are
refused naming their mode, and every other mode a PNG, TIFF or WebP can
carry decodes to the documented 8-bit values (service/pipeline/decode.py)."""

from __future__ import annotations

import io
import warnings

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from service.errors import InvalidInput
from service.pipeline import decode
from tests.fuzz.atheris_decode import picture

LIMIT = 1 << 24


def decoded(data: bytes, channels: int) -> np.ndarray:
    return decode.decode_image(data, channels, LIMIT, LIMIT)


def pillow_file(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def tiff(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, **options)
    return buffer.getvalue()


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in Pillow's fixed point (weights 19595, 38470, 7471 of 65536, rounded)."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def grey16() -> np.ndarray:
    """Random 16-bit samples, with the edges of the rule in the first row."""
    samples = np.random.default_rng(7).integers(0, 1 << 16, size=(12, 16), dtype=np.uint16)
    samples[0] = [0, 1, 127, 128, 255, 256, 257, 511, 32767, 32768, 32896, 65279, 65280, 65534, 65535, 514]
    return samples


def rgb16() -> np.ndarray:
    samples = grey16()
    return np.stack([samples, samples[::-1], samples ^ 0x5AA5], axis=-1)


GREY16_FILES = {
    "PNG written by Pillow (I;16)": lambda: pillow_file(Image.fromarray(grey16()), "PNG"),
    "TIFF written by Pillow (I;16)": lambda: pillow_file(Image.fromarray(grey16()), "TIFF"),
    "little-endian TIFF (tifffile)": lambda: tiff(grey16()),
    "big-endian TIFF (tifffile, I;16B)": lambda: tiff(grey16().astype(">u2")),
    "deflated tiled TIFF (tifffile)": lambda: tiff(grey16(), tile=(16, 16), compression="zlib"),
}
RGB16_FILES = {
    "PNG (libpng via imagecodecs)": lambda: imagecodecs.png_encode(rgb16()),
    "TIFF (tifffile)": lambda: tiff(rgb16(), photometric="rgb"),
    "big-endian LZW TIFF (tifffile)": lambda: tiff(
        rgb16().astype(">u2"), photometric="rgb", compression="lzw"
    ),
}


@pytest.mark.parametrize("name", list(GREY16_FILES))
def test_16_bit_grey_keeps_the_high_byte(name):
    expected = (grey16() >> 8).astype(np.uint8)
    assert expected[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 127, 128, 128, 254, 255, 255, 255, 2]
    data = GREY16_FILES[name]()
    np.testing.assert_array_equal(decoded(data, 1)[..., 0], expected)
    np.testing.assert_array_equal(decoded(data, 3), np.repeat(expected[..., None], 3, axis=-1))


@pytest.mark.parametrize("name", list(RGB16_FILES))
def test_16_bit_colour_keeps_the_high_byte(name):
    expected = (rgb16() >> 8).astype(np.uint8)
    data = RGB16_FILES[name]()
    np.testing.assert_array_equal(decoded(data, 3), expected)
    np.testing.assert_array_equal(decoded(data, 1)[..., 0], luma(expected))


def test_grey_and_colour_16_bit_files_of_one_picture_decode_alike():
    samples = grey16()
    grey = pillow_file(Image.fromarray(samples), "PNG")
    colour = imagecodecs.png_encode(np.repeat(samples[..., None], 3, axis=-1))
    for channels in (1, 3):
        np.testing.assert_array_equal(decoded(grey, channels), decoded(colour, channels))


def test_16_bit_rgba_drops_alpha_and_keeps_the_high_byte():
    samples = np.concatenate([rgb16(), grey16()[..., None]], axis=-1)
    np.testing.assert_array_equal(
        decoded(imagecodecs.png_encode(samples), 3), (samples[..., :3] >> 8).astype(np.uint8)
    )


@pytest.mark.parametrize(
    ("pixels", "mode", "what"),
    [
        (np.linspace(-1, 2, 12, dtype=np.float32).reshape(3, 4), "F", "floating-point"),
        (np.arange(12, dtype=np.int32).reshape(3, 4) * 100_000, "I", "32-bit or signed integer"),
        (np.arange(12, dtype=np.uint32).reshape(3, 4), "I", "32-bit or signed integer"),
        (np.arange(-6, 6, dtype=np.int16).reshape(3, 4), "I", "32-bit or signed integer"),
    ],
    ids=["float32", "int32", "uint32", "int16"],
)
def test_32_bit_and_signed_images_are_refused_naming_the_mode(pixels, mode, what):
    data = tiff(pixels)
    assert Image.open(io.BytesIO(data)).mode == mode
    for channels in (1, 3):
        with pytest.raises(InvalidInput) as refused:
            decoded(data, channels)
        assert f"mode {mode} ({what} samples)" in refused.value.message
        assert refused.value.field == "image"


def _palette_png() -> tuple[bytes, np.ndarray]:
    """A palette PNG with per-entry transparency, and its colours looked up by hand."""
    image = Image.fromarray(picture()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    colours = np.array(image.getpalette()[: 16 * 3], np.uint8).reshape(16, 3)
    return pillow_file(image, "PNG", transparency=bytes(range(0, 256, 16))), colours[np.asarray(image)]


def _cmyk_tiff() -> tuple[bytes, np.ndarray]:
    """Pure inks: no ink is white, each ink takes its complement away, black is black."""
    inks = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255]]], "u1")
    rgb = np.array([[[255, 255, 255], [0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 0, 0]]], "u1")
    return pillow_file(Image.fromarray(inks, "CMYK"), "TIFF"), rgb


def _alpha(mode: str) -> tuple[bytes, np.ndarray]:
    rgb = picture()
    with_alpha = np.concatenate([rgb, rgb[..., 1:2]], axis=-1)
    if mode == "RGBA":
        return pillow_file(Image.fromarray(with_alpha), "PNG"), rgb
    grey = luma(rgb)
    if mode == "LA":
        return pillow_file(Image.fromarray(np.stack([grey, rgb[..., 1]], -1), "LA"), "PNG"), grey
    # La: associated (premultiplied) alpha, opaque so the values are exact
    return tiff(np.stack([grey, np.full_like(grey, 255)], -1), extrasamples=[1]), grey


def _one_bit() -> tuple[bytes, np.ndarray]:
    bits = picture()[..., 0] > 100
    return pillow_file(Image.fromarray(bits), "PNG"), np.where(bits, 255, 0).astype(np.uint8)


def _ycbcr_tiff() -> tuple[bytes, np.ndarray]:
    grey = picture()[..., 0]
    neutral = np.stack([grey, np.full_like(grey, 128), np.full_like(grey, 128)], -1)
    return pillow_file(Image.fromarray(neutral, "YCbCr"), "TIFF"), grey


def _lab_tiff() -> tuple[bytes, np.ndarray]:
    """Neutral greys: L* 0, 50 and 100 with a* = b* = 0 (signed, as CIELAB TIFFs store them)."""
    lightness = np.array([[0, 128, 255]], np.uint8)
    lab = np.stack([lightness, np.zeros_like(lightness), np.zeros_like(lightness)], -1)
    return pillow_file(Image.fromarray(lab, "LAB"), "TIFF"), np.array([[0, 119, 255]], np.uint8)


def _pa_tiff() -> tuple[bytes, np.ndarray]:
    png, colours = _palette_png()
    image = Image.open(io.BytesIO(png)).convert("PA")
    return pillow_file(image, "TIFF"), colours


# mode -> a file of that mode, and its expected pixels (RGB, or grey when 2-D)
MODES = {
    "1": _one_bit,
    "P": _palette_png,
    "PA": _pa_tiff,
    "LA": lambda: _alpha("LA"),
    "La": lambda: _alpha("La"),
    "RGBA": lambda: _alpha("RGBA"),
    "CMYK": _cmyk_tiff,
    "YCbCr": _ycbcr_tiff,
    "LAB": _lab_tiff,
}


@pytest.mark.parametrize("mode", list(MODES))
def test_odd_modes_decode_to_their_colours(mode):
    data, expected = MODES[mode]()
    assert Image.open(io.BytesIO(data)).mode == mode
    rgb = expected if expected.ndim == 3 else np.repeat(expected[..., None], 3, axis=-1)
    tolerance = 1 if mode in ("YCbCr", "LAB") else 0  # Pillow's colour-space arithmetic rounds
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's "palette images with transparency" warning
        for channels, want in ((3, rgb), (1, luma(rgb))):
            got = decoded(data, channels)
            assert got.shape == (*want.shape[:2], channels) and got.dtype == np.uint8
            difference = np.abs(got.astype(int) - want.reshape(got.shape).astype(int)).max()
            assert difference <= tolerance, (channels, got[..., 0], want)


def _first_frame_files() -> dict[str, bytes]:
    first, second = Image.fromarray(picture()), Image.fromarray(picture()[::-1, ::-1].copy())
    pages = io.BytesIO()
    with tifffile.TiffWriter(pages) as writer:
        writer.write(picture(), photometric="rgb")
        writer.write(picture()[::-1], photometric="rgb")
    return {
        "animated PNG": pillow_file(first, "PNG", save_all=True, append_images=[second]),
        "animated lossless WebP": pillow_file(
            first, "WEBP", save_all=True, append_images=[second], lossless=True
        ),
        "two-page TIFF": pages.getvalue(),
    }


@pytest.mark.parametrize("name", list(_first_frame_files()))
def test_multi_frame_files_decode_their_first_frame(name):
    data = _first_frame_files()[name]
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    np.testing.assert_array_equal(decoded(data, 3), picture())
