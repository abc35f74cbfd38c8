"""Pyramidal TIFF slides for the two-level tests: a texture (every tile costs
bytes, so what is read shows) and a slide that is mostly white glass."""

from __future__ import annotations

import pathlib

import numpy as np
import tifffile

TILE = 256


def area_pyramid(pixels: np.ndarray, tile: int = TILE) -> list[np.ndarray]:
    """Level 0 and its factor-2 area means until a level fits in one tile."""
    levels = [pixels]
    while max(levels[-1].shape[:2]) > tile:
        level = levels[-1].astype(np.float32)
        height, width = (s // 2 * 2 for s in level.shape[:2])
        level = level[:height, :width].reshape(height // 2, 2, width // 2, 2, -1).mean(axis=(1, 3))
        levels.append(np.floor(level + 0.5).astype(np.uint8))
    return levels


def write_slide(path: pathlib.Path, pixels: np.ndarray, tile: int = TILE, compression: str = "zlib") -> None:
    """A tiled pyramidal BigTIFF of ``pixels`` (H, W, 1|3) uint8: level 0 with its levels as SubIFDs."""
    levels = area_pyramid(pixels, tile)
    photometric = "minisblack" if pixels.shape[-1] == 1 else "rgb"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, level in enumerate(levels):
            tif.write(
                level if pixels.shape[-1] == 3 else level[..., 0],
                tile=(tile, tile),
                compression=compression,
                photometric=photometric,
                subifds=len(levels) - 1 if index == 0 else None,
                subfiletype=1 if index else 0,
            )


def texture(side: int, seed: int = 0) -> np.ndarray:
    """(side, side, 1) uint8 noise over a smooth gradient: no tile compresses away."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(side), np.arange(side)) * (128 / (2 * side))
    return (ramp + rng.integers(0, 128, (side, side))).astype(np.uint8)[..., np.newaxis]


def glass_slide(side: int, tissue: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """(side, side, 1) uint8: bright glass (230-250) with dark textured tissue in
    the box ``tissue`` (top, left, height, width)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(230, 250, (side, side), dtype=np.uint8)
    top, left, height, width = tissue
    pixels[top : top + height, left : left + width] = rng.integers(40, 140, (height, width), dtype=np.uint8)
    return pixels[..., np.newaxis]


def tile_byte_counts(path: pathlib.Path) -> list[np.ndarray]:
    """Stored bytes of every tile, per level, as (rows, cols) arrays."""
    with tifffile.TiffFile(path) as tif:
        pages = [tif.pages[0], *tif.pages[0].pages]
        return [
            np.asarray(page.databytecounts).reshape(-(-page.shape[0] // TILE), -(-page.shape[1] // TILE))
            for page in pages
        ]
