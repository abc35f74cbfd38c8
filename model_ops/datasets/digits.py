"""Handwritten digit sprites: scikit-learn's 8x8 digits upscaled to 28x28.

Train and test canvases must never share a digit instance, so the 1797
images are split once, stratified by class and with a fixed seed, and each
split only ever draws from its own half.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

DIGIT_SIZE = 28
SPLITS = ("train", "test")
_TEST_FRACTION = 0.3
_SPLIT_SEED = 20190609


@functools.cache
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    sprites = np.stack([_upscale(img) for img in data.images])
    return sprites, data.target.astype(np.int64)


def _upscale(image: np.ndarray) -> np.ndarray:
    """8x8 values in [0, 16] -> 28x28 uint8 with smooth (bicubic) strokes."""
    small = Image.fromarray(np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8))
    big = np.asarray(small.resize((DIGIT_SIZE, DIGIT_SIZE), Image.BICUBIC))
    return np.ascontiguousarray(big)


@functools.cache
def load_digit_sprites(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(sprites (n, 28, 28) uint8, labels (n,) int64)`` of one split.

    The split is a stratified partition of the instances, so every class is
    present in both and no instance appears in both.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    sprites, labels = _all_digits()
    rng = np.random.default_rng(_SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for cls in range(10):
        members = np.flatnonzero(labels == cls)
        chosen = rng.choice(members, size=round(len(members) * _TEST_FRACTION), replace=False)
        test[chosen] = True
    keep = test if split == "test" else ~test
    return sprites[keep], labels[keep]


def sprites_by_class(split: str) -> list[np.ndarray]:
    """Indices into the split's sprites, one array per class 0..9."""
    _, labels = load_digit_sprites(split)
    return [np.flatnonzero(labels == cls) for cls in range(10)]
