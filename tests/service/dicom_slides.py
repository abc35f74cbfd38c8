"""Real DICOM whole-slide images for the tests: VL Whole Slide Microscopy
instances (TILED_FULL, one file per level) written with pydicom from a
pyramid of pixels, with raw, JPEG or lossless JPEG 2000 frames."""

from __future__ import annotations

import io
import pathlib

import imagecodecs
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    VLWholeSlideMicroscopyImageStorage,
    generate_uid,
)

SYNTAXES = {"raw": ExplicitVRLittleEndian, "jpeg": JPEGBaseline8Bit, "jpeg2000": JPEG2000Lossless}
COLOUR = {"raw": "RGB", "jpeg": "YBR_FULL_422", "jpeg2000": "YBR_RCT"}  # photometric of colour frames


def pyramid(pixels: np.ndarray, levels: int) -> list[np.ndarray]:
    """``pixels`` and ``levels - 1`` halvings of it (Pillow's 2x2 box reduction)."""
    out = [pixels]
    for _ in range(levels - 1):
        previous = out[-1][..., 0] if out[-1].shape[-1] == 1 else out[-1]
        smaller = np.asarray(Image.fromarray(previous).reduce(2))
        out.append(smaller.reshape(*smaller.shape[:2], -1))
    return out


def frames_of(pixels: np.ndarray, tile: int) -> list[np.ndarray]:
    """Row-major tiles of ``pixels``, edge tiles padded with zeros to the full tile."""
    height, width, channels = pixels.shape
    tiles = []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            frame = np.zeros((tile, tile, channels), np.uint8)
            part = pixels[top : top + tile, left : left + tile]
            frame[: part.shape[0], : part.shape[1]] = part
            tiles.append(frame)
    return tiles


def level_dataset(
    pixels: np.ndarray, tile: int, mpp: float | None, series: tuple[str, str, str], index: int, codec: str
) -> Dataset:
    """One level as a VL Whole Slide Microscopy Image dataset with its pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = SYNTAXES[codec]
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series
    ds.Modality = "SM"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        if index == 0
        else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    )
    height, width, channels = pixels.shape
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = height, width
    frames = frames_of(pixels, tile)
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = channels
    ds.PhotometricInterpretation = "MONOCHROME2" if channels == 1 else COLOUR[codec]
    if channels == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixFocalPlanes = ds.NumberOfOpticalPaths = 1
    if mpp is not None:
        measures = Dataset()
        measures.PixelSpacing = [mpp / 1000, mpp / 1000]  # millimetres: (row, column) spacing
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = (
            width * mpp / 1000,
            height * mpp / 1000,
            0.001,
        )
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    path = Dataset()
    path.OpticalPathIdentifier = "0"
    ds.OpticalPathSequence = Sequence([path])
    if codec == "raw":
        ds.PixelData = b"".join(frame.tobytes() for frame in frames)
    else:
        ds.PixelData = encapsulate([encode(frame, codec) for frame in frames], has_bot=True)
        ds.LossyImageCompression = "01" if codec == "jpeg" else "00"
    ds["PixelData"].VR = "OB"
    return ds


def encode(frame: np.ndarray, codec: str) -> bytes:
    """A frame as a JPEG (quality 95) or a lossless JPEG 2000 codestream."""
    plane = frame[..., 0] if frame.shape[-1] == 1 else frame
    if codec == "jpeg2000":
        return bytes(imagecodecs.jpeg2k_encode(plane, level=0, codecformat="J2K"))
    buffer = io.BytesIO()
    Image.fromarray(plane).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def write_series(
    directory: pathlib.Path,
    pixels: np.ndarray,
    levels: int = 3,
    tile: int = 64,
    mpp: float | None = 0.25,
    codec: str = "raw",
) -> list[np.ndarray]:
    """Write a slide of ``levels`` levels into ``directory`` (``level0.dcm``, ...);
    returns the pixels of each level. Level ``i`` is ``mpp * 2**i`` micrometres
    per pixel (no pixel spacing at all with ``mpp=None``); frames are ``codec``
    ("raw", "jpeg" or "jpeg2000")."""
    directory.mkdir(parents=True, exist_ok=True)
    series = (generate_uid(), generate_uid(), generate_uid())
    made = pyramid(pixels, levels)
    for index, level in enumerate(made):
        scale = None if mpp is None else mpp * 2**index
        level_dataset(level, tile, scale, series, index, codec).save_as(
            directory / f"level{index}.dcm", enforce_file_format=True
        )
    return made
