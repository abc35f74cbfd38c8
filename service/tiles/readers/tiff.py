"""Pyramidal tiled TIFF, BigTIFF and OME-TIFF through tifffile, tile by tile.

tifffile parses the structure (IFDs, SubIFD or OME pyramids); the tiles
themselves are read here with ``pread`` and decoded with the page's own
decoder. A level's tile index (its offset and byte-count arrays, up to 16
bytes a tile: megabytes for a gigapixel level) is not read when the file
is opened but one entry at a time, when a tile is loaded, so the bytes read
are the structure, the index entries and the tiles a region touches, all
counted. Striped (untiled) TIFFs work too, a strip being a tile as wide as
the image, within a size bound.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import xml.etree.ElementTree as ElementTree
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from service.errors import InvalidInput
from service.tiles.cache import TileCache
from service.tiles.paths import FIELD, ConfinedFile
from service.tiles.readers import frames
from service.tiles.readers.base import LevelGrid, Mpp, Reader, unreadable_is_invalid
from service.tiles.readers.files import CountingFile, pread_exact
from service.tiles.stats import Recorder

if TYPE_CHECKING:
    from typing_extensions import Buffer

# A strip or tile decoded (or stored) larger than this is refused: one segment must not cost a whole image.
MAX_SEGMENT_BYTES = 64 << 20
# IFDs (pages and SubIFDs) in one file: a servable image has a handful (levels, label, macro).
MAX_PAGES = 1024
_MAX_TAGS = 4096  # tifffile's own bound on the entries of one IFD
_COMPRESSION, _SUBIFDS = 259, 330
# A page's segment offsets and byte counts: tifffile takes the tile tags where both are present.
_SEGMENT_OFFSETS, _SEGMENT_BYTE_COUNTS = (324, 273), (325, 279)
_KEPT_TAGS = frozenset({_COMPRESSION, *_SEGMENT_OFFSETS, *_SEGMENT_BYTE_COUNTS})
_INTEGER_TYPES = {3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}  # SHORT, LONG, IFD, LONG8, IFD8
_OFFSET_TYPES = frozenset({4, 13, 16, 18})  # what SubIFDs may be
_INDEX_TYPES = frozenset({3, 4, 16})  # what segment offsets and byte counts may be
# What tifffile raises while it parses a malformed file: it takes tag values as
# they come (a size may be a tuple, a divisor zero), so fuzzing meets all of these.
# Only tifffile's own calls are guarded with them; the checks here are not.
_TIFFFILE_ERRORS = (
    tifffile.TiffFileError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    ZeroDivisionError,
    OverflowError,
    RuntimeError,
    struct.error,
    EOFError,
    OSError,
)
# What the codecs raise on a malformed tile (imagecodecs errors are RuntimeErrors).
_DECODE_ERRORS = (RuntimeError, ValueError, IndexError, EOFError)
_PHOTOMETRIC = {tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR}
_PHOTOMETRIC_NAMES: dict[int | None, str] = {member.value: member.name for member in tifffile.PHOTOMETRIC}
_COMPRESSION_NAMES: dict[int | None, str] = {member.value: member.name for member in tifffile.COMPRESSION}
_MICRONS_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit inch, centimetre
_OME_MICRONS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _positive(value: float) -> float | None:
    return value if math.isfinite(value) and value > 0 else None


def _ome_mpp(xml: str) -> Mpp | None:
    """(x, y) from the first OME Pixels element's PhysicalSizeX/Y (micrometres
    unless a unit says otherwise); None when absent or unreadable."""
    try:
        pixels = next(
            (node for node in ElementTree.fromstring(xml).iter() if node.tag.endswith("Pixels")), None
        )
        sizes = [
            _positive(float(pixels.get(f"PhysicalSize{axis}", "nan")) * _OME_MICRONS[unit])
            for axis in "XY"
            if pixels is not None and (unit := pixels.get(f"PhysicalSize{axis}Unit", "µm")) in _OME_MICRONS
        ]
    except (ElementTree.ParseError, ValueError):
        return None
    return (sizes[0], sizes[1]) if len(sizes) == 2 and sizes[0] and sizes[1] else None


def _tag_mpp(page: tifffile.TiffPage) -> Mpp | None:
    """(x, y) from the resolution tags, pixels per inch or centimetre; None
    without them, without a unit, or when they are not positive numbers."""
    unit = page.tags.get("ResolutionUnit")
    per_unit = _MICRONS_PER_UNIT.get((_tag_int(unit.value) or 0) if unit is not None else 2)  # default: inch
    values: list[Any] = [getattr(page.tags.get(name), "value", ()) for name in ("XResolution", "YResolution")]
    try:
        sizes = [
            _positive(per_unit * value[1] / value[0]) for value in values if per_unit and len(value) == 2
        ]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return (sizes[0], sizes[1]) if len(sizes) == 2 and sizes[0] and sizes[1] else None


def _check_ifds(file: CountingFile) -> dict[int, dict[int, _Entry]]:
    """Refuse a TIFF whose chain of pages loops, or whose pages and SubIFDs,
    counted the way tifffile walks them, exceed ``MAX_PAGES``, before tifffile
    parses it: it follows a page chain that points back at itself for ever,
    and parses a SubIFD again for every path that leads to it (a few
    kilobytes can hold millions of paths, or a cycle). Returns the entries of
    ``_KEPT_TAGS`` of every IFD walked, by the IFD's offset."""
    file.seek(0)
    head = file.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\0", b"\0+")
    if len(head) < (16 if big else 8):
        return {}  # too short to point at a first IFD: tifffile refuses it
    layout = _IfdLayout(order, big)
    (page,) = struct.unpack_from(order + layout.offset_format, head, 8 if big else 4)
    pages: set[int] = set()
    ifds: dict[int, dict[int, _Entry]] = {}
    visits = 0
    while page > 0:
        if page in pages:
            raise InvalidInput("corrupt TIFF: its chain of pages loops", field=FIELD)
        pages.add(page)
        pending, following = [page], 0
        while pending:  # the page and the SubIFD tree under it, every path counted
            visits += 1
            if visits > MAX_PAGES:
                raise InvalidInput(
                    f"TIFF of more than {MAX_PAGES} pages and SubIFDs; not a servable image", field=FIELD
                )
            offset = pending.pop()
            ifd = layout.read(file, offset)
            if ifd is None and offset == page:
                return ifds  # malformed page: tifffile refuses it and stops the chain there
            if ifd is not None:
                link, below, ifds[offset] = ifd
                following = link if offset == page else following
                pending.extend(below)
        page = following
    return ifds


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One IFD entry as stored: its TIFF type and count, and its value field,
    which holds the values where they fit and their offset in the file where
    they do not. Its values are read only if of one of ``_INTEGER_TYPES``."""

    order: str
    kind: int
    count: int
    field: bytes

    @property
    def item_size(self) -> int:
        return struct.calcsize(self.order + _INTEGER_TYPES[self.kind])

    @property
    def size(self) -> int:
        return self.count * self.item_size

    @property
    def at(self) -> int | None:
        """Where the values lie in the file; None where they fit in the field."""
        if self.size <= len(self.field):
            return None
        (at,) = struct.unpack(self.order + ("I" if len(self.field) == 4 else "Q"), self.field)
        return int(at)

    def values(self, file: CountingFile) -> tuple[int, ...]:
        """All its values; () where they lie (partly) beyond the file."""
        at, data = self.at, self.field
        if at is not None:
            file.seek(at)
            data = file.read(self.size)
        if len(data) < self.size:
            return ()
        return struct.unpack_from(f"{self.order}{self.count}{_INTEGER_TYPES[self.kind]}", data)

    def value(self, file: ConfinedFile, index: int) -> tuple[int, int]:
        """(value ``index``, bytes read for it): one ``pread`` where the values lie outside the IFD."""
        at = self.at
        data = self.field if at is None else pread_exact(file, self.item_size, at + index * self.item_size)
        (value,) = struct.unpack_from(
            self.order + _INTEGER_TYPES[self.kind], data, 0 if at is not None else index * self.item_size
        )
        return int(value), 0 if at is None else len(data)


@dataclasses.dataclass(frozen=True)
class _IfdLayout:
    """How IFDs are laid out in a classic TIFF or a BigTIFF of one byte order."""

    order: str
    big: bool

    @property
    def offset_format(self) -> str:
        return "Q" if self.big else "I"

    def read(self, file: CountingFile, offset: int) -> tuple[int, list[int], dict[int, _Entry]] | None:
        """(offset of the next IFD, offsets of its SubIFDs, its first entry of each of
        ``_KEPT_TAGS``) of the IFD at ``offset``, or None if malformed."""
        count_format, entry_format = ("Q", "HHQ8s") if self.big else ("H", "HHI4s")
        count_size = struct.calcsize(self.order + count_format)
        entry_size = struct.calcsize(self.order + entry_format)
        link_size = struct.calcsize(self.order + self.offset_format)
        if offset + count_size > file.size:
            return None
        file.seek(offset)
        (count,) = struct.unpack(self.order + count_format, file.read(count_size))
        if count > _MAX_TAGS:
            return None  # tifffile refuses such an IFD
        data = file.read(count * entry_size + link_size)
        if len(data) < count * entry_size + link_size:
            return None
        below: list[int] = []
        kept: dict[int, _Entry] = {}
        for tag, kind, number, value in struct.iter_unpack(self.order + entry_format, data[:-link_size]):
            if tag == _SUBIFDS and kind in _OFFSET_TYPES and 0 < number <= MAX_PAGES:
                below.extend(_Entry(self.order, kind, number, value).values(file))
            elif tag in _KEPT_TAGS and tag not in kept:
                kept[tag] = _Entry(self.order, kind, number, value)
        (link,) = struct.unpack(self.order + self.offset_format, data[-link_size:])
        return link, below, kept


def _unread_arrays(ifds: dict[int, dict[int, _Entry]], file: CountingFile) -> dict[int, tuple[int, int]]:
    """The segment offset and byte-count arrays tifffile is to parse without reading, by
    offset: (their bytes, the bytes of their first value). tifffile loads them whole
    with their page, yet of a compressed page's arrays it uses only the first values
    (whether the first tile is JFIF); an uncompressed page's arrays, every value of
    which tells tifffile whether its data is contiguous, are left to it."""
    unread: dict[int, tuple[int, int]] = {}
    for entries in ifds.values():
        compression = entries.get(_COMPRESSION)
        if (
            compression is None
            or compression.kind not in _INTEGER_TYPES
            or compression.values(file) in ((), (1,))
        ):
            continue
        for tag in (*_SEGMENT_OFFSETS, *_SEGMENT_BYTE_COUNTS):
            entry = entries.get(tag)
            at = entry.at if entry is not None and entry.kind in _INDEX_TYPES else None
            if entry is not None and at is not None and at + entry.size <= file.size:
                unread[at] = (entry.size, entry.item_size)
    return unread


class _ParsedFile(CountingFile):
    """The file as tifffile parses it: an array of ``unread`` (offset: its bytes, the
    bytes of its first value) is read as its first value followed by zeros, the
    rest neither read nor counted; ``_SegmentIndex`` reads the entries tiles need."""

    def __init__(self, fd: int, size: int, recorder: Recorder | None) -> None:
        super().__init__(fd, size, recorder)
        self.unread: dict[int, tuple[int, int]] = {}

    def readinto(self, buffer: Buffer) -> int:
        start, view = self.tell(), memoryview(buffer).cast("B")
        size, first = self.unread.get(start, (-1, 0))
        if len(view) != size:
            return super().readinto(view)
        view[first:] = bytes(size - first)
        super().readinto(view[:first])
        self.seek(start + size)
        return size


def _tag_int(value: object) -> int | None:
    """A tag value as an int, or None when the file gave something else (a tuple, bytes)."""
    return int(value) if isinstance(value, (int, np.integer)) else None


@dataclasses.dataclass(frozen=True)
class _Page:
    """What the checks here need of one TIFF page, read from tifffile in one guarded place
    (its properties parse tag values lazily and may raise anything on a malformed file)."""

    page: tifffile.TiffPage
    dtype: np.dtype | None
    samples: int | None
    planar: int | None
    photometric: int | None
    depth: int | None
    compression: int | None
    tiled: bool
    sizes: tuple[int | None, ...]  # image length, width; tile (or strip) length, width
    offsets: int
    bytecounts: int

    @classmethod
    def of(cls, page: tifffile.TiffPage) -> _Page:
        tiled = bool(page.is_tiled)
        tile = (page.tilelength, page.tilewidth) if tiled else (page.rowsperstrip, page.imagewidth)
        return cls(
            page,
            page.dtype,
            _tag_int(page.samplesperpixel),
            _tag_int(page.planarconfig),
            _tag_int(page.photometric),
            _tag_int(page.imagedepth),
            _tag_int(page.compression),
            tiled,
            tuple(_tag_int(size) for size in (page.imagelength, page.imagewidth, *tile)),
            len(page.dataoffsets),
            len(page.databytecounts),
        )


def _servable(page: _Page, planes: int, index: int) -> None:
    """Refuse a pyramid level this reader cannot serve."""
    problems = []
    if planes != 1:
        problems.append(f"several planes ({planes}; only single-plane grayscale or RGB images are supported)")
    if page.dtype != np.uint8:
        problems.append(f"sample type {page.dtype} (uint8 needed)")
    if page.samples not in (1, 3, 4):
        problems.append(f"{page.samples} samples per pixel")
    elif page.samples > 1 and page.planar != tifffile.PLANARCONFIG.CONTIG:
        problems.append("separate colour planes")
    if page.photometric not in _PHOTOMETRIC:
        problems.append(f"photometric {_PHOTOMETRIC_NAMES.get(page.photometric, str(page.photometric))}")
    if page.compression in tifffile.TIFF.IMAGE_COMPRESSIONS and page.compression not in frames.CHECKED:
        problems.append(f"compression {_COMPRESSION_NAMES.get(page.compression, str(page.compression))}")
    if page.depth != 1:
        problems.append("volumetric tiles")
    if problems:
        raise InvalidInput(f"TIFF level {index} is not servable: {', '.join(problems)}", field=FIELD)


def _grid(page: _Page) -> LevelGrid:
    """The page's grid of tiles (or strips), refused unless sizes, segment bytes and offsets agree."""
    height, width, tile_height, tile_width = page.sizes
    if height is None or width is None or tile_height is None or tile_width is None or page.samples is None:
        raise InvalidInput("corrupt TIFF: malformed size tags", field=FIELD)
    # a strip may claim more rows than the image has; a tile's size is what its decoder allocates
    grid = LevelGrid(height, width, tile_height if page.tiled else min(tile_height, height), tile_width)
    if grid.tile_height * grid.tile_width * page.samples > MAX_SEGMENT_BYTES:
        raise InvalidInput(
            f"TIFF segments of {grid.tile_width}x{grid.tile_height} pixels are too large to "
            "read by region; save the image tiled (e.g. 256x256 tiles)",
            field=FIELD,
        )
    expected = -(-grid.height // grid.tile_height) * -(-grid.width // grid.tile_width)
    if page.offsets != expected or page.bytecounts != expected:
        raise InvalidInput(
            f"corrupt TIFF: {page.offsets} segment offsets for {expected} segments", field=FIELD
        )
    return grid


def _parse(file: _ParsedFile) -> tuple[tifffile.TiffFile, dict[int, dict[int, _Entry]]]:
    """tifffile's parse of ``file``, its segment arrays left unread, and the kept entries of its IFDs."""
    with unreadable_is_invalid("not a readable TIFF", _TIFFFILE_ERRORS):
        ifds = _check_ifds(file)
        file.unread = _unread_arrays(ifds, file)
        file.seek(0)  # tifffile takes the position it is handed as the start of the file
        # tifffile reads any binary file object; its annotation asks for IO[bytes]
        tif = tifffile.TiffFile(file)  # type: ignore[arg-type]
        tif.series  # noqa: B018  (parsed now, inside the guard)
    return tif, ifds


@dataclasses.dataclass(frozen=True)
class _SegmentIndex:
    """Where a level's tiles (or strips) lie and how many bytes each takes, read
    entry by entry as tiles are loaded: two small reads a tile, instead of the
    whole arrays (up to 16 bytes a tile) when the file is opened."""

    offsets: _Entry
    byte_counts: _Entry

    @classmethod
    def of(cls, entries: dict[int, _Entry], segments: int, file_size: int, level: int) -> _SegmentIndex:
        """The index of a level of ``segments`` segments from its IFD's ``entries``, refused
        unless both arrays are of an integer type, hold as many values and lie within the file."""
        arrays = []
        for tags, what in ((_SEGMENT_OFFSETS, "offsets"), (_SEGMENT_BYTE_COUNTS, "byte counts")):
            entry = next((entries[tag] for tag in tags if tag in entries), None)
            if entry is None or entry.kind not in _INDEX_TYPES or entry.count < segments:
                raise InvalidInput(
                    f"corrupt TIFF: level {level}'s segment {what} are not {segments} integers", field=FIELD
                )
            at = entry.at
            if at is not None and at + entry.size > file_size:
                raise InvalidInput(
                    f"corrupt TIFF: level {level}'s segment {what} ({entry.size} bytes at {at}) "
                    f"lie beyond its {file_size} bytes",
                    field=FIELD,
                )
            arrays.append(entry)
        return cls(*arrays)

    def segment(self, file: ConfinedFile, index: int) -> tuple[int, int, int]:
        """(offset, byte count, bytes read to learn them) of segment ``index``."""
        offset, offset_read = self.offsets.value(file, index)
        count, count_read = self.byte_counts.value(file, index)
        return offset, count, offset_read + count_read


def _drop_segment_arrays(pages: list[tifffile.TiffPage]) -> None:
    """Drop tifffile's segment arrays of ``pages`` (read as zeros by ``_ParsedFile``;
    ``_SegmentIndex`` locates tiles): 16 bytes a tile, 3.4 MB for a 100k x 100k slide,
    held as long as a reader is cached, and once its TiffFile is closed (here or by a
    reader) until a full garbage collection frees the TiffFile's reference cycles."""
    for page in pages:
        page.dataoffsets = page.databytecounts = ()
        for code in (*_SEGMENT_OFFSETS, *_SEGMENT_BYTE_COUNTS):
            tag = page.tags.get(code)
            if tag is not None:
                tag.value = ()


def check_segments(file: ConfinedFile, recorder: Recorder) -> None:
    """Refuse a TIFF-based slide before OpenSlide reads it if any page's tiles
    (or strips) are empty, inconsistent or larger than ``MAX_SEGMENT_BYTES``:
    OpenSlide sizes its buffers from them and aborts the whole process when
    an allocation fails. NDPI strips are exempt (OpenSlide cuts them at the
    JPEG restart markers, and a level is one strip)."""
    with _parse(_ParsedFile(file.fd, file.size, recorder))[0] as tif:
        with unreadable_is_invalid("not a readable slide", _TIFFFILE_ERRORS):
            pages, ndpi = [_Page.of(page) for page in tif.pages], tif.is_ndpi
        _drop_segment_arrays([page.page for page in pages])
        for page in pages:
            if page.tiled or not ndpi:
                _grid(page)


class TiffReader(Reader):
    format_name = "TIFF"

    def __init__(self, file: ConfinedFile, cache: TileCache, recorder: Recorder) -> None:
        self._file = _ParsedFile(file.fd, file.size, recorder)
        self._tif, ifds = _parse(self._file)
        try:
            with unreadable_is_invalid("not a readable TIFF", _TIFFFILE_ERRORS):
                levels = self._tif.series[0].levels
                planes = [
                    int(
                        np.prod(
                            [n for n, axis in zip(level.shape, level.axes, strict=True) if axis not in "YXS"]
                        )
                    )
                    for level in levels
                ]
                pages = [_Page.of(level.keyframe) for level in levels]
            for index, (page, count) in enumerate(zip(pages, planes, strict=True)):
                _servable(page, count, index)
            grids = [_grid(page) for page in pages]  # sizes checked before tifffile divides by them
            self._indexes = [
                _SegmentIndex.of(ifds.get(page.page.offset, {}), page.offsets, file.size, index)
                for index, page in enumerate(pages)
            ]
            self._pages = [page.page for page in pages]
            self._announced_size = [frames.CHECKED.get(page.compression or 0) for page in pages]
            with unreadable_is_invalid("not a readable TIFF", _TIFFFILE_ERRORS):
                for built in self._pages:  # read lazy tags and build decoders now, not in request threads
                    built.jpegtables, built.decode  # noqa: B018
                self.format_name = (
                    "OME-TIFF" if self._tif.is_ome else "BIGTIFF" if self._tif.is_bigtiff else "TIFF"
                )
                ome = self._tif.ome_metadata if self._tif.is_ome else None
                self.base_mpp = _ome_mpp(ome) if ome else _tag_mpp(self._pages[0])
            _drop_segment_arrays(self._pages)
            super().__init__(file, cache, grids, self._pages[0].samplesperpixel)
        except BaseException:
            self._tif.close()
            raise
        self._file.recorder = None  # structure parsed by the opening request; tiles are counted per read

    def close(self) -> None:
        self._tif.close()
        super().close()

    def _load_tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        page, grid = self._pages[level], self.grids[level]
        index = row * -(-grid.width // grid.tile_width) + col
        height, width = grid.tile_shape(row, col)
        offset, count, index_read = self._indexes[level].segment(self.file, index)
        recorder.record(bytes_read=index_read)
        if count == 0:  # sparse file: a tile never written is empty
            return np.zeros((height, width, self.native_channels), np.uint8)
        if count > MAX_SEGMENT_BYTES:
            raise InvalidInput(
                f"corrupt TIFF: tile {index} of level {level} claims {count} bytes", field=FIELD
            )
        data = pread_exact(self.file, count, offset)
        recorder.record(bytes_read=count, tiles_decoded=1)
        announced_size = self._announced_size[level]
        if announced_size is not None:  # an image codec allocates what its stream announces
            announced = announced_size(data)
            if announced is None or announced[0] > grid.tile_height or announced[1] > grid.tile_width:
                raise InvalidInput(
                    f"corrupt TIFF tile {index} of level {level}: its stream announces "
                    f"{announced or 'no'} image size, the tile is {grid.tile_height}x{grid.tile_width}",
                    field=FIELD,
                )
        with unreadable_is_invalid(f"corrupt TIFF tile {index} of level {level}", _DECODE_ERRORS):
            segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            if segment is None:
                raise InvalidInput(f"corrupt TIFF tile {index} of level {level}: no pixels", field=FIELD)
            tile = np.asarray(segment).reshape(segment.shape[-3:])
        # edge tiles are stored padded: keep (and account for) only their pixels
        return tile if tile.shape[:2] == (height, width) else tile[:height, :width].copy()
