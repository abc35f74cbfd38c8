"""Picks the reader for a confined file: vendor slide formats by extension
(several are TIFF inside, but only OpenSlide knows their layout), the rest by
their first bytes, never by a name a client chose; a directory is a DICOM
series."""

from __future__ import annotations

from service.errors import InvalidInput, Unsupported
from service.pipeline.sources import SourceLimits
from service.tiles.cache import TileCache
from service.tiles.paths import FIELD, ConfinedFile
from service.tiles.readers.base import Reader
from service.tiles.readers.dicom import DicomReader, is_dicom
from service.tiles.readers.files import pread_exact
from service.tiles.readers.plain import PlainReader
from service.tiles.readers.slide import EXTENSIONS as SLIDE_EXTENSIONS
from service.tiles.readers.slide import NAMED_EXTENSIONS, SlideCache, SlideReader
from service.tiles.readers.tiff import TiffReader, check_segments
from service.tiles.stats import Recorder

# What GetModelMetadata can announce for tile references.
FORMATS = (
    "TIFF",
    "BIGTIFF",
    "OME-TIFF",
    "PNG",
    "JPEG",
    "DICOM",
    *(ext.lstrip(".").upper() for ext in SLIDE_EXTENSIONS),
)
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_PLAIN_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def open_reader(
    file: ConfinedFile, cache: TileCache, recorder: Recorder, limits: SourceLimits, slide_cache: SlideCache
) -> Reader:
    """A reader owning ``file`` from now on. If this raises, the file stays the caller's to close."""
    if file.is_directory:
        return DicomReader(file, cache, recorder)
    name = file.real_path.lower()
    if name.endswith(NAMED_EXTENSIONS):
        raise Unsupported(
            "multi-file slide formats (MRXS, VMS, VMU) are not served: OpenSlide opens their "
            "companion files by name, which cannot be confined to the data root; convert the "
            "slide to a pyramidal TIFF",
            field=FIELD,
        )
    head = pread_exact(file, min(132, file.size), 0)  # DICOM's magic follows a 128-byte preamble
    recorder.record(bytes_read=len(head))
    if is_dicom(head):  # whatever its name: OpenSlide's own DICOM reader looks for siblings by name
        return DicomReader(file, cache, recorder)
    if name.endswith(SLIDE_EXTENSIONS):
        if head.startswith(_TIFF_MAGIC):
            check_segments(file, recorder)  # OpenSlide aborts the process on sizes tifffile can refuse first
        return SlideReader(file, cache, recorder, slide_cache)
    if head.startswith(_TIFF_MAGIC):
        return TiffReader(file, cache, recorder)
    if head.startswith(_PLAIN_MAGIC):
        return PlainReader(file, cache, recorder, limits.max_image_pixels, limits.max_image_bytes)
    raise InvalidInput(f"not a readable image: tile references accept {', '.join(FORMATS)}", field=FIELD)
