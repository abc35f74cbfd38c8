"""NumPy oracle of the patch op (and its adjoint) and random test cases;
the oracle is checked on hand-made cases.

Plain NumPy on purpose: the CuPy kernel check imports it on GPU machines
without TensorFlow.
"""

from __future__ import annotations

import numpy as np

DTYPES = [np.uint8, np.uint16, np.float16, np.float32, np.float64]
INT32_MAX = np.iinfo(np.int32).max


def random_images(rng, shape, dtype):
    """Full-range integers, or normal floats."""
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def random_case(rng, n_dims, dtype):
    """Random shapes; offsets land inside, across borders and far outside."""
    batch, n_patches, channels = rng.integers(1, 4), rng.integers(0, 7), rng.integers(1, 5)
    dims = rng.integers(1, 13, size=n_dims)
    size = tuple(int(s) for s in rng.integers(1, 8, size=n_dims))
    images = random_images(rng, (batch, *dims, channels), dtype)
    low = -np.array(size) - 2
    offsets = rng.integers(low, dims + 3, size=(batch, n_patches, n_dims)).astype(np.int32)
    if n_patches:  # one patch at the extremes of int32: no overflow, all fill
        offsets[0, 0] = rng.choice([-INT32_MAX - 1, INT32_MAX], size=n_dims)
    return images, offsets, size


def _windows(image_shape, offset, size):
    """Source and destination slices of one patch, or None when it misses the image."""
    src, dst = [], []
    for d, (o, p) in enumerate(zip(offset, size, strict=True)):
        lo, hi = max(0, int(o)), min(image_shape[d], int(o) + p)
        if lo >= hi:
            return None
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(o), hi - int(o)))
    return tuple(src), tuple(dst)


def reference_patches(images, offsets, size, fill=0, out_dtype=None, scale=1.0):
    """Patches (B, N, *size, C); converted values are float32(v) * float32(scale)."""
    out_dtype = np.dtype(out_dtype or images.dtype)
    batch, n = images.shape[0], images.ndim - 2
    out = np.full((batch, offsets.shape[1], *size, images.shape[-1]), fill, dtype=out_dtype)
    for b in range(batch):
        for k in range(offsets.shape[1]):
            window = _windows(images.shape[1 : 1 + n], offsets[b, k], size)
            if window is None:
                continue
            values = images[(b, *window[0])]
            if out_dtype != images.dtype or scale != 1:
                acc = np.float64 if out_dtype == np.float64 else np.float32
                values = (values.astype(acc) * acc(scale)).astype(out_dtype)
            out[(b, k, *window[1])] = values
    return out


def reference_scatter(grad, offsets, image_shape, scale=1.0):
    """Adjoint: patch values added into a zero image, outside values dropped."""
    image = np.zeros(image_shape, dtype=np.float64)
    n = len(image_shape) - 2
    size = grad.shape[2 : 2 + n]
    for b in range(image_shape[0]):
        for k in range(offsets.shape[1]):
            window = _windows(image_shape[1 : 1 + n], offsets[b, k], size)
            if window is not None:
                image[(b, *window[0])] += grad[(b, k, *window[1])] * scale
    return image


def test_reference_on_a_hand_made_case():
    image = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    offsets = np.array([[[-1, 1], [2, 2], [5, 5]]], np.int32)
    got = reference_patches(image, offsets, (2, 2), fill=-1)[..., 0]
    np.testing.assert_array_equal(got[0, 0], [[-1, -1], [2, 3]])
    np.testing.assert_array_equal(got[0, 1], [[9, -1], [-1, -1]])
    np.testing.assert_array_equal(got[0, 2], np.full((2, 2), -1))


def test_reference_scatter_is_the_adjoint():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 5, 4, 2))
    offsets = rng.integers(-3, 6, size=(2, 6, 2)).astype(np.int32)
    grad = rng.normal(size=(2, 6, 3, 3, 2))
    lhs = np.sum(reference_patches(image, offsets, (3, 3)) * grad)
    rhs = np.sum(image * reference_scatter(grad, offsets, image.shape))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
