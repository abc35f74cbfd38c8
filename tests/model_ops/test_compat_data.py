"""Multi-resolution inputs: FromTensors batches and the in-memory image."""

from __future__ import annotations

import numpy as np
import pytest

from model_ops.data import FromTensors, InMemoryImage
from model_ops.lowres import low_resolution_view


def test_from_tensors_batches_every_sample_once_per_epoch_lowest_resolution_first():
    x_low = np.arange(10)[:, None, None, None] * np.ones((10, 2, 2, 1))
    x_high = np.arange(10)[:, None, None, None] * np.ones((10, 8, 8, 1))
    y = np.arange(10)
    data = FromTensors([x_low, x_high], y, batch_size=4, seed=0)
    assert len(data) == 3 and data.data(0) is not None and data.targets() is y
    seen = []
    for i in range(len(data)):
        (low, high), targets = data[i]
        assert low.shape[1:] == (2, 2, 1) and high.shape[1:] == (8, 8, 1)
        np.testing.assert_array_equal(low[:, 0, 0, 0], targets)
        np.testing.assert_array_equal(high[:, 0, 0, 0], targets)
        seen.extend(targets)
    assert sorted(seen) == list(range(10)) and seen != list(range(10))
    first = [data[i][1] for i in range(len(data))]
    data.on_epoch_end()
    assert any(not np.array_equal(a, data[i][1]) for i, a in enumerate(first))


def test_from_tensors_without_shuffle_targets_lists_and_no_targets():
    xs = [np.zeros((5, 1)), np.ones((5, 3))]
    ordered = FromTensors(xs, [np.arange(5), -np.arange(5)], batch_size=2, shuffle=False)
    _, (a, b) = ordered[2]
    assert a.tolist() == [4] and b.tolist() == [-4]
    (inputs,) = FromTensors(xs[:1], batch_size=5)[0]
    assert inputs.shape == (5, 1)
    with pytest.raises(ValueError, match="same length"):
        FromTensors(xs, np.arange(4))


def test_in_memory_image_views_and_patches():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    image = InMemoryImage(pixels)
    assert image.shape == (40, 30, 3)
    np.testing.assert_array_equal(image.low_view((8, 6)), low_resolution_view(pixels, (8, 6)))
    patches = image.read_patches([[0, 0], [35, -2], [100, 100]], (6, 4))
    assert patches.shape == (3, 6, 4, 3) and patches.dtype == np.uint8
    np.testing.assert_array_equal(patches[0], pixels[:6, :4])
    np.testing.assert_array_equal(patches[1, :5, 2:], pixels[35:, :2])
    assert not patches[1, 5:].any() and not patches[1, :, :2].any() and not patches[2].any()
    with pytest.raises(ValueError, match="uint8"):
        InMemoryImage(pixels.astype(np.float32))
