"""DICOM whole-slide images (VL Whole Slide Microscopy Image, TILED_FULL) through wsidicom.

A DICOM slide is a series of instances, one file per pyramid level. A
reference names either the series' directory (every whole-slide level file
directly in it, which must hold one series) or one instance file (that
level alone, a pyramid of one). Directory entries are opened beneath the
confined directory's descriptor one name at a time with ``O_NOFOLLOW``:
symlinks, subdirectories and special files in a series directory are
ignored, so nothing outside the directory is read.

wsidicom parses the files from streams over those descriptors and reads the
frames (tiles); a frame is decoded here only after its size is checked.
Before wsidicom sees a file, each level's header is read with pydicom and
what would make it allocate without bound is refused: sizes, frame counts,
a frame grid that is not the image's, pixel data shorter than its frames,
and fragment sequences longer than the frame count. Some of wsidicom's
reads go through a second descriptor it opens on the same ``/proc/self/fd``
name, so bytes read are measured from the kernel's per-thread counter.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import stat
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.tiles.cache import TileCache
from service.tiles.paths import FIELD, ConfinedFile
from service.tiles.readers import frames
from service.tiles.readers.base import LevelGrid, Mpp, Reader, unreadable_is_invalid
from service.tiles.readers.files import CountingFile, pread_exact
from service.tiles.readers.tiff import MAX_SEGMENT_BYTES
from service.tiles.stats import Recorder, ThreadReadMeter

MAX_ENTRIES = 1024  # directory entries looked at for a series
MAX_LEVELS = 64  # whole-slide level files in one series
MAX_FRAMES = 1 << 21  # frames of one level: 2M 256-px tiles is a 370k x 370k image
_WSI_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_RAW = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit and explicit VR little endian
# compressed transfer syntaxes served -> the parser of the image size a frame announces
_ANNOUNCED: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
    "1.2.840.10008.1.2.4.50": frames.jpeg,  # JPEG baseline
    "1.2.840.10008.1.2.4.90": frames.jpeg2000,  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": frames.jpeg2000,  # JPEG 2000
}
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW
_PIXEL_DATA, _ITEM, _DELIMITER = b"\xe0\x7f\x10\x00", b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
_UNDEFINED = 0xFFFFFFFF
_HEADER_TAGS = [
    "ImageType",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "TotalPixelMatrixRows",
    "TotalPixelMatrixColumns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "DimensionOrganizationType",
    "TotalPixelMatrixFocalPlanes",
    "NumberOfOpticalPaths",
    "SOPInstanceUIDOfConcatenationSource",
    "ExtendedOffsetTable",
    "SharedFunctionalGroupsSequence",
]
# The built-in errors pydicom and wsidicom raise on a malformed file (their own are added to them).
_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ZeroDivisionError,
    OverflowError,
    RuntimeError,  # NotImplementedError included
    struct.error,
    EOFError,
    OSError,
)


def _errors_of(module: Any) -> tuple[type[Exception], ...]:
    """The exception classes a library defines for what it cannot read."""
    return tuple(
        kind for kind in vars(module).values() if isinstance(kind, type) and issubclass(kind, Exception)
    )


def _dicom_errors() -> tuple[type[Exception], ...]:
    """What pydicom and wsidicom raise on a malformed file (imported on first use)."""
    import pydicom.errors
    import wsidicom.errors  # type: ignore[import-untyped]

    return (*_PARSE_ERRORS, *_errors_of(pydicom.errors), *_errors_of(wsidicom.errors))


def is_dicom(head: bytes) -> bool:
    """Whether a file's first bytes are a DICOM file's: 'DICM' after the 128-byte preamble."""
    return head[128:132] == b"DICM"


class _Stream(CountingFile):
    """The stream wsidicom and pydicom parse: no read larger than the rest of the
    file, and none over ``MAX_SEGMENT_BYTES`` (no element a servable slide needs
    whole is that large), so a forged length cannot size a buffer."""

    def read(self, size: int | None = -1) -> bytes:
        rest = max(0, self.size - self.tell())
        count = rest if size is None or size < 0 else min(size, rest)
        if count > MAX_SEGMENT_BYTES:
            raise OSError(errno.EFBIG, f"a DICOM element of {count} bytes")
        return super().read(count) or b""


@dataclasses.dataclass(frozen=True)
class _Level:
    """A whole-slide level file, checked, and what its header says."""

    file: ConfinedFile
    series: str
    channels: int


def _header(file: ConfinedFile) -> tuple[Any, int]:
    """The dataset up to the pixel data (only ``_HEADER_TAGS``), and where the pixel data starts."""
    import pydicom

    stream = _Stream(file.fd, file.size, None)
    dataset = pydicom.dcmread(stream, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    return dataset, stream.tell()


def _int(dataset: Any, keyword: str, default: int | None = None) -> int:
    value = dataset.get(keyword, default)
    if not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise InvalidInput(f"corrupt DICOM: {keyword} is {value!r}", field=FIELD)
    return int(value)


def _pixel_spacing(dataset: Any) -> Any:
    """The level's (row, column) pixel spacing in millimetres, None if it states none."""
    for group in ("SharedFunctionalGroupsSequence", "PixelMeasuresSequence"):
        items = dataset.get(group)
        if not items:
            return None
        dataset = items[0]
    return dataset.get("PixelSpacing")


def _refuse(problem: str) -> InvalidInput:
    return InvalidInput(f"DICOM whole-slide level not served: {problem}", field=FIELD)


def _check_level(file: ConfinedFile) -> _Level | None:
    """The level ``file`` holds, checked; None for an instance that is not a
    whole-slide pyramid level (label, overview, thumbnail, annotations)."""
    # pydicom parses an element's value when it is first asked for: every access is guarded
    with unreadable_is_invalid("not a readable DICOM file", _dicom_errors()):
        return _checked_level(file)


def _checked_level(file: ConfinedFile) -> _Level | None:
    dataset, pixels_at = _header(file)
    if str(dataset.file_meta.get("MediaStorageSOPClassUID", "")) != _WSI_CLASS:
        return None
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    if syntax not in _RAW and syntax not in _ANNOUNCED:
        raise _refuse(f"transfer syntax {syntax} (raw little endian, JPEG baseline and JPEG 2000 are)")
    image_type = dataset.get("ImageType") or []
    if len(image_type) < 3 or image_type[2] != "VOLUME":
        return None
    if dataset.get("DimensionOrganizationType") != "TILED_FULL":
        raise _refuse("frames not TILED_FULL (sparse tiling)")
    if dataset.get("SOPInstanceUIDOfConcatenationSource") is not None:
        raise _refuse("a level split into concatenated instances")
    if _int(dataset, "TotalPixelMatrixFocalPlanes", 1) != 1 or _int(dataset, "NumberOfOpticalPaths", 1) != 1:
        raise _refuse("several focal planes or optical paths")
    if _pixel_spacing(dataset) is None:
        raise _refuse("no pixel spacing (levels are ordered by it)")
    channels, bits = _int(dataset, "SamplesPerPixel"), _int(dataset, "BitsAllocated")
    if channels not in (1, 3) or bits != 8:
        raise _refuse(f"{channels} samples of {bits} bits (1 or 3 samples of 8 bits are)")
    grid = LevelGrid(
        _int(dataset, "TotalPixelMatrixRows"),
        _int(dataset, "TotalPixelMatrixColumns"),
        _int(dataset, "Rows"),
        _int(dataset, "Columns"),
    )
    frame_bytes = grid.tile_height * grid.tile_width * channels
    if frame_bytes > MAX_SEGMENT_BYTES:
        raise _refuse(f"frames of {grid.tile_width}x{grid.tile_height} pixels are too large")
    count = -(-grid.height // grid.tile_height) * -(-grid.width // grid.tile_width)
    if count > MAX_FRAMES:
        raise _refuse(f"{count} frames, over the limit of {MAX_FRAMES}")
    if _int(dataset, "NumberOfFrames", 1) != count:
        raise InvalidInput(
            f"corrupt DICOM: {dataset.get('NumberOfFrames')} frames for a grid of {count} tiles", field=FIELD
        )
    _check_pixel_data(file, pixels_at, syntax, count, frame_bytes, "ExtendedOffsetTable" in dataset)
    return _Level(file, str(dataset.get("SeriesInstanceUID", "")), channels)


def _check_pixel_data(
    file: ConfinedFile, at: int, syntax: str, count: int, frame_bytes: int, extended_table: bool
) -> None:
    """Refuse pixel data that does not hold ``count`` frames inside the file.

    Native frames must all lie in the file. Encapsulated frames are listed by
    the basic offset table (one entry a frame), by an extended offset table,
    or, when both are empty, by the fragments themselves, which wsidicom
    would list one by one whatever their number: counted here first, up to
    one past the frame count (one fragment per frame is served)."""
    implicit = syntax == "1.2.840.10008.1.2"
    header = pread_exact(file, min(12, max(0, file.size - at)), at)
    length_at = 4 if implicit else 8
    if header[:4] != _PIXEL_DATA or len(header) < length_at + 4:
        raise InvalidInput("corrupt DICOM: no pixel data after the header", field=FIELD)
    (length,) = struct.unpack_from("<I", header, length_at)
    start = at + length_at + 4
    if syntax in _RAW:
        if length < count * frame_bytes or start + count * frame_bytes > file.size:
            raise InvalidInput(
                f"corrupt DICOM: pixel data of {min(length, file.size - start)} bytes for "
                f"{count} frames of {frame_bytes}",
                field=FIELD,
            )
        return
    if length != _UNDEFINED:
        raise InvalidInput("corrupt DICOM: compressed pixel data of a defined length", field=FIELD)
    item = pread_exact(file, 8, start)
    (table,) = struct.unpack_from("<I", item, 4)
    if item[:4] != _ITEM or table not in (0, 4 * count):
        raise InvalidInput(
            f"corrupt DICOM: a basic offset table of {table} bytes for {count} frames", field=FIELD
        )
    if table or extended_table:
        return
    fragments, at = 0, start + 8
    while (item := pread_exact(file, 8, at))[:4] != _DELIMITER:
        (size,) = struct.unpack_from("<I", item, 4)
        fragments += 1
        if item[:4] != _ITEM or size > MAX_SEGMENT_BYTES:
            raise InvalidInput(f"corrupt DICOM: fragment {fragments} is not a frame", field=FIELD)
        if fragments > count:
            raise _refuse(f"more fragments than its {count} frames (one fragment a frame is)")
        at += 8 + size
    if fragments != count:
        raise InvalidInput(f"corrupt DICOM: {fragments} fragments for {count} frames", field=FIELD)


def _entries(directory: ConfinedFile) -> Iterator[ConfinedFile]:
    """The regular files directly in ``directory`` that start like DICOM, each
    opened beneath its descriptor without following a symlink; the files
    yielded are the caller's."""
    with os.scandir(directory.fd) as scan:
        names = sorted(entry.name for entry in itertools.islice(scan, MAX_ENTRIES + 1))
    if len(names) > MAX_ENTRIES:
        raise InvalidInput(f"a DICOM series directory of more than {MAX_ENTRIES} entries", field=FIELD)
    seen: set[tuple[int, int]] = set()  # a file met under two names (a hard link, a rename) is one level
    for name in names:
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=directory.fd)
        except OSError as err:
            if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise  # the server's fault
            continue  # a symlink (ELOOP), or gone since the listing
        try:
            info = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        file = ConfinedFile(fd, info)
        try:
            dicom = (
                stat.S_ISREG(info.st_mode)
                and (info.st_dev, info.st_ino) not in seen
                and is_dicom(pread_exact(file, min(132, file.size), 0))
            )
        except BaseException:
            file.close()
            raise
        if dicom:
            seen.add((info.st_dev, info.st_ino))
            yield file
        else:
            file.close()


def _levels(file: ConfinedFile) -> list[_Level]:
    """The checked level files of the series ``file`` names (a directory or one
    instance file). Files opened here are the caller's on success and closed
    on failure; ``file`` itself stays the caller's."""
    if not file.is_directory:
        level = _check_level(file)
        if level is None:
            raise InvalidInput(
                "not a whole-slide pyramid level (a label, overview or thumbnail?)", field=FIELD
            )
        return [level]
    levels: list[_Level] = []
    try:
        for entry in _entries(file):
            try:
                level = _check_level(entry)
            except BaseException:
                entry.close()
                raise
            if level is None:
                entry.close()
                continue
            levels.append(level)
            if len(levels) > MAX_LEVELS:
                raise InvalidInput(f"a DICOM series of more than {MAX_LEVELS} levels", field=FIELD)
        if not levels:
            raise InvalidInput("the directory holds no DICOM whole-slide image", field=FIELD)
        series = {level.series for level in levels}
        if len({level.channels for level in levels}) > 1:
            raise InvalidInput("corrupt DICOM series: gray and colour levels", field=FIELD)
        if len(series) > 1:
            raise InvalidInput(
                f"the directory holds {len(series)} DICOM series; give each series its own "
                "directory, or reference one level file",
                field=FIELD,
            )
    except BaseException:
        for level in levels:
            level.file.close()
        raise
    return levels


class DicomReader(Reader):
    format_name = "DICOM"

    def __init__(self, file: ConfinedFile, cache: TileCache, recorder: Recorder) -> None:
        # imported on first use, as OpenSlide is (the server starts without them), and
        # before the bytes this thread reads are metered
        import wsidicom
        from upath import UPath
        from wsidicom.config import Settings, use_settings  # type: ignore[import-untyped]
        from wsidicom.file import WsiDicomFileSource  # type: ignore[import-untyped]
        from wsidicom.file.io.wsidicom_io import WsiDicomReadIO  # type: ignore[import-untyped]

        self._errors = _dicom_errors()
        # frames are cached decoded in the shared tile cache, not twice more inside wsidicom
        settings = Settings(decoded_frame_cache_size=0, encoded_frame_cache_size=0)
        with ThreadReadMeter() as meter:
            levels = _levels(file)
            self._files = [level.file for level in levels if level.file is not file]
            try:
                with unreadable_is_invalid("not a readable DICOM whole-slide image", self._errors):
                    with use_settings(settings):
                        streams = [
                            WsiDicomReadIO(
                                _Stream(level.file.fd, level.file.size, None), UPath(level.file.proc_path)
                            )
                            for level in levels
                        ]
                        self._wsi = wsidicom.WsiDicom(WsiDicomFileSource(streams), settings=settings)
                    pyramid = list(self._wsi.levels)
                    self._instances = [level.default_instance for level in pyramid]
                    grids = [
                        LevelGrid(
                            level.size.height, level.size.width, level.tile_size.height, level.tile_size.width
                        )
                        for level in pyramid
                    ]
                    self._level_mpp = [
                        None if level.mpp is None else (float(level.mpp.width), float(level.mpp.height))
                        for level in pyramid
                    ]
                    self._syntaxes = [
                        str(instance.image_data.transfer_syntax) for instance in self._instances
                    ]
                super().__init__(file, cache, grids, levels[0].channels)
            except BaseException:
                self._close_levels()
                raise
        recorder.record(bytes_read=meter.bytes)

    def _close_levels(self) -> None:
        wsi = getattr(self, "_wsi", None)
        if wsi is not None:
            wsi.close()  # closes its streams, which leave the descriptors to their files
        for level_file in self._files:
            level_file.close()

    def close(self) -> None:
        self._close_levels()
        super().close()

    def mpp(self, level: int) -> Mpp | None:
        """Each level's own pixel spacing, as the file states it."""
        return self._level_mpp[level]

    def _load_tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        from wsidicom.geometry import Point  # type: ignore[import-untyped]

        instance, grid = self._instances[level], self.grids[level]
        what = f"corrupt DICOM frame ({row}, {col}) of level {level}"
        with unreadable_is_invalid(what, self._errors), ThreadReadMeter() as meter:
            data = instance.image_data.get_encoded_tile(
                Point(col, row), instance.default_z, instance.default_path
            )
        recorder.record(bytes_read=meter.bytes, tiles_decoded=1)
        syntax = self._syntaxes[level]
        if syntax in _RAW:
            expected = grid.tile_height * grid.tile_width * self.native_channels
            if len(data) != expected:
                raise InvalidInput(f"{what}: {len(data)} bytes, expected {expected}", field=FIELD)
        else:  # an image codec allocates what its stream announces
            announced = _ANNOUNCED[syntax](data)
            if announced is None or announced[0] > grid.tile_height or announced[1] > grid.tile_width:
                raise InvalidInput(
                    f"{what}: its stream announces {announced or 'no'} image size, the frame is "
                    f"{grid.tile_height}x{grid.tile_width}",
                    field=FIELD,
                )
        with unreadable_is_invalid(what, self._errors):
            pixels = np.asarray(instance.image_data.decoder.decode(data))
        if pixels.ndim == 2:
            pixels = pixels[..., np.newaxis]
        height, width = grid.tile_shape(row, col)
        return pixels if pixels.shape[:2] == (height, width) else pixels[:height, :width].copy()
