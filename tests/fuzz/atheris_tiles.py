"""Coverage-guided fuzz target for the tile-reference open path (atheris).

``fuzz_one(data)`` writes ``data`` as a file under a private data root and
opens it as a tile reference twice, as ``input.tif`` (formats recognised by
their first bytes: TIFF, BigTIFF, OME-TIFF, PNG, JPEG, DICOM) and as ``input.svs``
(OpenSlide), through a fresh ``TileOpener`` with a small cache; then reads
the low view and a few patches, as a request would. A ``ServiceError`` with
a documented status is a refusal and passes silently; any other exception,
or a ServiceError of another status, propagates: that is a finding.

``seeds()`` gives small valid and near-valid files to start from; the
committed corpus (``tests/fuzz/corpus/tiles/``) holds them and the inputs
fuzzing found worth keeping. The hostile-file tests
(tests/service/test_tiles_hostile.py) mutate the same seeds and replay the
corpus through ``fuzz_one``.
"""

from __future__ import annotations

import atexit
import io
import pathlib
import shutil
import struct
import tempfile

import numpy as np
import tensorflow as tf
import tifffile
from PIL import Image

from model_ops.lowres import low_resolution_size
from service.errors import Code, ServiceError
from service.pipeline.payload import TileRef
from service.pipeline.sources import SourceLimits
from service.tiles import TileOpener
from tests.service.dicom_slides import level_dataset

# The statuses a tile reference may be refused with (service/README.md, service/tiles/README.md).
DOCUMENTED = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED,
    Code.UNIMPLEMENTED,
}
NAMES = ("input.tif", "input.svs")
LIMITS = SourceLimits(max_image_pixels=4_000_000, max_image_bytes=4 << 20)
CACHE_BYTES = 1 << 20
VIEW_SCALE = 0.25
PATCH = (16, 16)

_root: pathlib.Path | None = None


def _data_root() -> pathlib.Path:
    """The private data root, made on first use and removed at exit."""
    global _root
    if _root is None:
        _root = pathlib.Path(tempfile.mkdtemp(prefix="ats-fuzz-tiles-"))
        atexit.register(shutil.rmtree, _root, ignore_errors=True)
    return _root


def exercise(opener: TileOpener, path: str, level: int | None = None) -> None:
    """What a request does with a tile reference: open, low view, patches."""
    source = opener(TileRef(path, level), 3, LIMITS)
    height, width, _ = source.shape
    source.low_view(low_resolution_size((height, width), VIEW_SCALE))
    corners = [[0, 0], [height // 2, width // 2], [height - 1, width - 1], [-PATCH[0] // 2, width - 4]]
    source.patches(tf.constant([corners], tf.int32), PATCH)


def fuzz_one(data: bytes) -> None:
    """Open ``data`` as a tile reference; raise on anything but a documented refusal."""
    root = _data_root()
    for name in NAMES:
        (root / name).write_bytes(data)
    opener = TileOpener(str(root), CACHE_BYTES)  # fresh: no reader cached from an earlier input
    for name in NAMES:
        try:
            exercise(opener, name)
        except ServiceError as err:
            if err.code not in DOCUMENTED:
                raise


def _tiff(pixels: np.ndarray, levels: int = 1, **options: object) -> bytes:
    """``pixels`` as a TIFF with ``levels - 1`` halved SubIFD levels, written by tifffile."""
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, bigtiff=bool(options.pop("bigtiff", False))) as tif:
        tif.write(pixels, subifds=levels - 1, **options)
        for level in range(1, levels):
            tif.write(pixels[:: 2**level, :: 2**level], subfiletype=1, **options)
    return buffer.getvalue()


def _pillow(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def _ome(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, ome=True) as tif:
        uuid = "urn:uuid:00000000-0000-0000-0000-000000000001"  # tifffile draws one per file otherwise
        tif.write(
            pixels, subifds=1, tile=(16, 16), photometric="rgb", compression="zlib", metadata={"UUID": uuid}
        )
        tif.write(pixels[::2, ::2], subfiletype=1, tile=(16, 16), photometric="rgb", compression="zlib")
    return buffer.getvalue()


def _aperio(pixels: np.ndarray) -> bytes:
    """An Aperio-style SVS: tiled RGB pages described as Aperio's are (OpenSlide reads it)."""
    height, width = pixels.shape[:2]
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        for level in (pixels, pixels[::4, ::4]):
            description = (
                f"Aperio Image Library v12.0.0\r\n{width}x{height} [0,0 {width}x{height}] "
                f"(16x16) -> {level.shape[1]}x{level.shape[0]}|AppMag = 20|MPP = 0.5"
            )
            tif.write(
                level,
                tile=(16, 16),
                compression="zlib",
                photometric="rgb",
                description=description,
                metadata=None,
            )
    return buffer.getvalue()


def tiff_entries(data: bytes) -> list[tuple[int, str, bool]]:
    """Every IFD entry of a TIFF's chain of pages: (offset of the entry, struct
    byte order, BigTIFF?), for forging tags; stops at anything malformed."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return []
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    count_format, entry_size, offset_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size = struct.calcsize(count_format)
    (ifd,) = struct.unpack_from(order + offset_format, data, 8 if big else 4)
    entries: list[tuple[int, str, bool]] = []
    seen = set()
    while ifd > 0 and ifd + count_size <= len(data) and ifd not in seen:
        seen.add(ifd)
        (count,) = struct.unpack_from(order + count_format, data, ifd)
        first = ifd + count_size
        end = first + count * entry_size
        if end + struct.calcsize(offset_format) > len(data):
            break
        entries.extend((entry, order, big) for entry in range(first, end, entry_size))
        (ifd,) = struct.unpack_from(order + offset_format, data, end)
    return entries


def _with_tag(data: bytes, tag: int, value: int) -> bytes:
    """A classic TIFF with the first ``tag`` entry set inline to ``value``."""
    forged = bytearray(data)
    for entry, order, _ in tiff_entries(data):
        if struct.unpack_from(order + "H", forged, entry)[0] == tag:
            kind = struct.unpack_from(order + "H", forged, entry + 2)[0]
            struct.pack_into(order + ("H" if kind == 3 else "I"), forged, entry + 8, value)
            return bytes(forged)
    raise ValueError(f"no tag {tag}")


def _first_page_pointing_at_itself(data: bytes) -> bytes:
    """A little-endian classic TIFF whose first page names itself as the next page."""
    forged = bytearray(data)
    (ifd,) = struct.unpack_from("<I", forged, 4)
    (count,) = struct.unpack_from("<H", forged, ifd)
    struct.pack_into("<I", forged, ifd + 2 + 12 * count, ifd)
    return bytes(forged)


def _jpeg_frames_claiming(data: bytes, side: int) -> bytes:
    """``data`` with every JPEG frame header (SOF0) claiming ``side`` x ``side`` pixels."""
    forged = bytearray(data)
    at = forged.find(b"\xff\xc0")
    while at >= 0:
        struct.pack_into(">HH", forged, at + 5, side, side)
        at = forged.find(b"\xff\xc0", at + 1)
    return bytes(forged)


def _dicom(pixels: np.ndarray, codec: str) -> bytes:
    """One DICOM whole-slide level (read as a pyramid of one), frames of 16 x 16 in ``codec``."""
    buffer = io.BytesIO()
    uids = ("1.2.3.1", "1.2.3.2", "1.2.3.3")  # fixed: the seed's bytes stay the same from run to run
    dataset = level_dataset(pixels, 16, 0.5, uids, 0, codec)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def seeds() -> dict[str, bytes]:
    """Small valid and near-valid files of every format the tile path reads, by name."""
    rng = np.random.default_rng(0)
    gray = np.kron(rng.integers(0, 256, (6, 5), dtype=np.uint8), np.ones((8, 8), np.uint8))  # 48x40
    rgb = np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 32x32
    tiled = _tiff(gray, levels=2, tile=(16, 16), compression="zlib")
    rgb_jpeg = _tiff(rgb, levels=2, tile=(16, 16), compression="jpeg", photometric="rgb")
    return {
        "tiled.tif": tiled,
        "strips.tif": _tiff(gray, rowsperstrip=8),
        "rgb_jpeg.tif": rgb_jpeg,
        "big.tif": _tiff(gray, levels=2, tile=(16, 16), bigtiff=True),
        "ome.tif": _ome(rgb),
        "slide.svs": _aperio(rgb),
        "image.png": _pillow(gray, "PNG"),
        "image.jpg": _pillow(rgb, "JPEG"),
        "tile_width_0.tif": _with_tag(tiled, 322, 0),
        "truncated.tif": tiled[: len(tiled) // 2],
        "bigtiff_header.tif": b"II+\0\x08\0\0\0" + struct.pack("<Q", 16),
        "jpeg_tiles_claiming_65000.tif": _jpeg_frames_claiming(rgb_jpeg, 65000),
        "page_chain_loop.tif": _first_page_pointing_at_itself(tiled),
        "subifd_cycle.tif": _with_tag(tiled, 330, struct.unpack_from("<I", tiled, 4)[0]),
        "level_raw.dcm": _dicom(rgb, "raw"),
        "level_jpeg.dcm": _dicom(rgb, "jpeg"),
        "level_jpeg2000.dcm": _dicom(rgb, "jpeg2000"),
    }
