"""Plain PNG and JPEG files under the data root, through the tile interface.

Neither format can decode a region, so each level is one tile: the whole
image, decoded once and cached. JPEG offers more: libjpeg decodes directly at
1/2, 1/4 and 1/8 scale (Pillow's ``draft``), which this reader exposes as
pyramid levels 1-3, so the low-resolution view costs a fraction of a full
decode. Those levels come from the DCT, not from area averaging: a JPEG's
low view can differ slightly from the one its uploaded pixels give (see
service/tiles/README.md).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.errors import TooLarge
from service.pipeline import decode
from service.tiles.cache import TileCache
from service.tiles.paths import FIELD, ConfinedFile
from service.tiles.readers.base import LevelGrid, Reader, unreadable_is_invalid
from service.tiles.readers.files import CountingFile, pread_exact
from service.tiles.stats import Recorder

_JPEG_REDUCTIONS = (1, 2, 4, 8)
_GRAY_MODES = {"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N"}
# What Pillow raises on malformed files (UnidentifiedImageError is an OSError),
# as for uploads; anything else is refused too, but logged.
_PILLOW_ERRORS = (*decode.CORRUPT, IndexError)


class PlainReader(Reader):
    def __init__(
        self, file: ConfinedFile, cache: TileCache, recorder: Recorder, max_pixels: int, max_bytes: int
    ) -> None:
        size = file.size
        if size > max_bytes:
            raise TooLarge(
                f"{size} bytes exceed the server limit of {max_bytes} bytes for an image "
                "decoded whole; tile it as a pyramidal TIFF",
                field=FIELD,
            )
        with self._open(CountingFile(file.fd, size, recorder)) as image:
            width, height = image.size
            if height * width > max_pixels:
                raise TooLarge(
                    f"image of {width}x{height} = {height * width} pixels exceeds the server "
                    f"limit of {max_pixels} pixels for an image decoded whole; tile it as a "
                    "pyramidal TIFF",
                    field=FIELD,
                )
            self.format_name = image.format
            decode.check_mode(image.mode)  # 32-bit and float samples refused, as for uploads
            self._mode = "L" if image.mode in _GRAY_MODES else "RGB"
        self._full_size = (width, height)
        reductions = (
            [r for r in _JPEG_REDUCTIONS if r <= min(height, width)] if self.format_name == "JPEG" else [1]
        )
        grids = []
        for reduction in reductions:  # libjpeg's scaled output is ceil(size / reduction)
            h, w = -(-height // reduction), -(-width // reduction)
            grids.append(LevelGrid(h, w, h, w))
        self._reductions = reductions
        super().__init__(file, cache, grids, 1 if self._mode == "L" else 3)

    @staticmethod
    def _open(source: CountingFile | io.BytesIO) -> Image.Image:
        """Pillow's lazy open: reads the header only."""
        with unreadable_is_invalid("not a readable PNG or JPEG image", _PILLOW_ERRORS):
            try:
                # Pillow reads any binary file object; its annotation asks for IO[bytes]
                return Image.open(source, formats=("PNG", "JPEG"))  # type: ignore[arg-type]
            except Image.DecompressionBombError:
                raise TooLarge(
                    "image exceeds the server's pixel limit for an image decoded whole; tile it as a "
                    "pyramidal TIFF",
                    field=FIELD,
                ) from None

    def _load_tile(self, level: int, row: int, col: int, recorder: Recorder) -> np.ndarray:
        data = pread_exact(self.file, self.file.size, 0)
        recorder.record(bytes_read=len(data), tiles_decoded=1)
        with (
            self._open(io.BytesIO(data)) as image,
            unreadable_is_invalid(f"corrupt or truncated {self.format_name} image", _PILLOW_ERRORS),
        ):
            if level:  # Pillow picks the largest reduction r with size // r >= the size asked for
                reduction = self._reductions[level]
                image.draft(image.mode, (self._full_size[0] // reduction, self._full_size[1] // reduction))
            image.load()
            pixels = np.asarray(decode.eight_bit(image, self.native_channels))  # 16-bit: high byte
        return pixels.reshape(*pixels.shape[:2], self.native_channels)
