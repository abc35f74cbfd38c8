"""Fuzz target ``decode``: uploaded image bytes through the server's decode stage.

``fuzz_one`` is what ``SourceRegistry.open`` runs for an ``image`` upload
(``decode.decode_image``, called without the TensorFlow wrapper around its
result so atheris runs thousands of inputs a second), for a one- and a
three-channel model. A refusal must be ``InvalidInput`` or ``TooLarge``;
any other exception is a finding. ``seeds`` are small valid files of every
accepted format and of the odd modes and bit depths, written by Pillow,
tifffile and imagecodecs from NumPy pixels.

Run it with ``python -m tests.fuzz.run decode --minutes N``; the corpus in
tests/fuzz/corpus/decode/ is replayed by tests/fuzz/test_fuzz_corpus.py.
"""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from service.errors import InvalidInput, TooLarge
from service.pipeline import decode

# Small limits: a forged header may claim up to this many pixels, and the
# fuzzer must not spend its time (or memory) decoding them.
MAX_PIXELS = 1 << 20
MAX_BYTES = 1 << 20


def fuzz_one(data: bytes) -> None:
    """Decode ``data`` as the server would; only the client's errors may come out."""
    for channels in (1, 3):
        try:
            pixels = decode.decode_image(data, channels, MAX_PIXELS, MAX_BYTES)
        except (InvalidInput, TooLarge):
            continue
        height, width, got = pixels.shape
        assert pixels.dtype == np.uint8 and got == channels and height * width > 0, pixels.shape


def picture(height: int = 24, width: int = 32) -> np.ndarray:
    """An RGB gradient with a bright square: smooth enough for JPEG, varied enough to matter."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([y * 255 // height, x * 255 // width, (x + y) * 3 % 256], axis=-1).astype(np.uint8)
    pixels[height // 3 : height // 3 + 6, width // 2 : width // 2 + 6] = 255
    return pixels


def wide(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` widened to 16 bits, with low bytes that differ from the high ones."""
    return pixels.astype(np.uint16) * 256 + (pixels[::-1].astype(np.uint16) ^ 0x5A)


def _pillow(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _tifffile(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, **options)
    return buffer.getvalue()


def _slide_like(rgb: np.ndarray) -> bytes:
    """An Aperio-SVS-like file: tiled JPEG base level, then a smaller strip page."""
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        description = "Aperio Image Library v12.0.15\r\n32x24 [0,0 32x24] (16x16) JPEG/RGB Q=70|AppMag = 20"
        tif.write(rgb, photometric="rgb", tile=(16, 16), compression="jpeg", description=description)
        tif.write(rgb[::2, ::2], photometric="rgb", compression="jpeg")
    return buffer.getvalue()


def _ome(rgb: np.ndarray) -> bytes:
    """An OME-TIFF pyramid: the full image with a half-size level in a SubIFD."""
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, ome=True) as tif:
        # a fixed UUID: tifffile draws one per file otherwise, and the seed must not change
        uuid = "urn:uuid:00000000-0000-0000-0000-000000000000"
        tiles = {"tile": (16, 16), "compression": "zlib"}
        tif.write(rgb, photometric="rgb", subifds=1, metadata={"UUID": uuid}, **tiles)
        tif.write(rgb[::2, ::2], photometric="rgb", subfiletype=1, compression="zlib")
    return buffer.getvalue()


def seeds() -> dict[str, bytes]:
    """Valid files of every accepted format, mode and bit depth, a few hundred bytes to a few KB each."""
    rgb = picture()
    image = Image.fromarray(rgb)
    translucent = image.copy()
    translucent.putalpha(Image.fromarray(rgb[..., 1]))
    grey = image.convert("L")
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "png-rgb.png": _pillow(image, "PNG"),
        "png-grey-interlaced.png": _pillow(grey, "PNG", interlace=1),
        "png-rgba.png": _pillow(translucent, "PNG"),
        "png-palette-transparency.png": _pillow(palette, "PNG", transparency=bytes(range(16))),
        "png-grey-alpha.png": _pillow(image.convert("LA"), "PNG"),
        "png-1bit.png": _pillow(image.convert("1"), "PNG"),
        "png-grey16.png": _pillow(Image.fromarray(wide(rgb[..., 0])), "PNG"),
        "png-rgb16.png": imagecodecs.png_encode(wide(rgb)),
        "png-animated.png": _pillow(image, "PNG", save_all=True, append_images=[image.rotate(180)]),
        "jpeg-rgb.jpg": _pillow(image, "JPEG", quality=80),
        "jpeg-grey.jpg": _pillow(grey, "JPEG"),
        "jpeg-cmyk.jpg": _pillow(image.convert("CMYK"), "JPEG"),
        "jpeg-progressive.jpg": _pillow(image, "JPEG", progressive=True, quality=60),
        "tiff-rgb.tif": _pillow(image, "TIFF"),
        "tiff-lzw-pages.tif": _pillow(
            image, "TIFF", compression="tiff_lzw", save_all=True, append_images=[image.rotate(180)]
        ),
        "tiff-packbits-palette.tif": _pillow(palette, "TIFF", compression="packbits"),
        "tiff-jpeg-ycbcr.tif": _pillow(image, "TIFF", compression="jpeg"),
        "tiff-cmyk.tif": _pillow(image.convert("CMYK"), "TIFF"),
        # from the array: Pillow's LAB conversion adds an ICC profile stamped with the time
        "tiff-lab.tif": _pillow(Image.fromarray(np.asarray(image.convert("LAB")), "LAB"), "TIFF"),
        "tiff-1bit-group4.tif": _pillow(image.convert("1"), "TIFF", compression="group4"),
        "tiff-tiled-deflate.tif": _tifffile(rgb, photometric="rgb", tile=(16, 16), compression="zlib"),
        "tiff-grey16-big-endian.tif": _tifffile(wide(rgb[..., 0]).astype(">u2")),
        "tiff-rgb16.tif": _tifffile(wide(rgb), photometric="rgb"),
        "tiff-float32.tif": _tifffile(rgb[..., 0].astype(np.float32) / 255),
        "tiff-int32.tif": _tifffile(rgb[..., 0].astype(np.int32) * 1000),
        "bigtiff-rgb.tif": _tifffile(rgb, photometric="rgb", bigtiff=True, compression="zlib"),
        "ome-pyramid.ome.tif": _ome(rgb),
        "svs-like.svs": _slide_like(rgb),
        "webp-lossy.webp": _pillow(image, "WEBP", quality=70),
        "webp-lossless.webp": _pillow(image, "WEBP", lossless=True),
        "webp-alpha.webp": _pillow(translucent, "WEBP"),
        "webp-animated.webp": _pillow(image, "WEBP", save_all=True, append_images=[image.rotate(180)]),
    }
