"""The patch op's GPU launchers as TensorFlow's build compiles them (nvcc),
called through ctypes on a real GPU, against the NumPy oracle.

Beyond the kernels (test_cuda_kernel_gpu.py) this covers the host code the
op runs: launch shapes, dtype dispatch and its refusals, the gradient's
zeroing of its output, launches on a non-default stream, and images of more
than 2**31 elements (64-bit indexing). Collected only when named, on a GPU.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tests.gpu.kernels import (
    FLOAT_TOLERANCES,
    PAIRS,
    Launchers,
    build_launchers,
    cp,
    gradient_cases,
    require_gpu,
)
from tests.model_ops.test_extract_patches_reference import (
    random_case,
    random_images,
    reference_patches,
    reference_scatter,
)

require_gpu()


@pytest.fixture(scope="module")
def launchers(tmp_path_factory: pytest.TempPathFactory) -> Launchers:
    return Launchers(build_launchers(tmp_path_factory.mktemp("launchers")))


def _out(images, offsets, size, dtype):
    return cp.full((images.shape[0], offsets.shape[1], *size, images.shape[-1]), 7, dtype)


@pytest.mark.parametrize("n_dims", [1, 2, 3])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{np.dtype(p[0])}-{np.dtype(p[1])}")
def test_forward_launcher_matches_numpy_on_a_side_stream(launchers, pair, n_dims):
    in_dtype, out_dtype = pair
    scale = 1 / 255 if np.dtype(in_dtype) != np.dtype(out_dtype) else 1.0
    rng = np.random.default_rng([n_dims, len(np.dtype(in_dtype).name)])
    stream = cp.cuda.Stream(non_blocking=True)
    for _ in range(8):
        images, offsets, size = random_case(rng, n_dims, in_dtype)
        with stream:
            x, o = cp.asarray(images), cp.asarray(offsets)
            out = _out(images, offsets, size, out_dtype)
        assert launchers.patches_into(x, o, out, scale, 3.0, stream) is None
        stream.synchronize()
        expected = reference_patches(images, offsets, size, 3, out_dtype, scale)
        np.testing.assert_array_equal(out.get(), expected)


@pytest.mark.parametrize("n_dims", [1, 2, 3])
@pytest.mark.parametrize("dtype, rtol", FLOAT_TOLERANCES)
def test_gradient_launcher_zeroes_then_scatters(launchers, dtype, rtol, n_dims):
    for images, offsets, grad in gradient_cases(n_dims, dtype):
        image_grad = cp.full(images.shape, np.nan, dtype)  # garbage the launcher must clear
        assert launchers.scatter_into(cp.asarray(grad), cp.asarray(offsets), image_grad, 0.5) is None
        expected = reference_scatter(grad, offsets, images.shape, 0.5)
        np.testing.assert_allclose(image_grad.get(), expected, rtol=rtol, atol=rtol)


def test_launchers_refuse_what_the_op_does_not_register(launchers):
    images, offsets = cp.ones((1, 4, 4, 1), cp.uint8), cp.zeros((1, 1, 2), cp.int32)
    for in_dtype, out_dtype in [(np.uint8, np.float16), (np.float32, np.float64), (np.uint16, np.uint8)]:
        out = cp.full((1, 1, 2, 2, 1), 9, out_dtype)
        error = launchers.patches_into(images.astype(in_dtype), offsets, out)
        assert error == "unsupported dtype pair"
        assert bool((out == 9).all()), "a refused launch wrote its output"
    grad, image_grad = cp.ones((1, 1, 2, 2, 1), cp.uint8), cp.zeros((1, 4, 4, 1), cp.uint8)
    assert launchers.scatter_into(grad, offsets, image_grad) == "the gradient exists for floating dtypes only"


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_images_past_int32_indexing(launchers, dtype):
    """2**31 + 2**16 elements: patches at the far corner, inside and across its
    borders, read and scatter where 32-bit indexing would wrap around."""
    d0, d1 = 2**15 + 1, 2**16
    images = cp.empty((1, d0, d1, 1), dtype)
    cp.copyto(images, cp.arange(d1, dtype=cp.float32).astype(dtype)[None, None, :, None])
    images[0, -64:] = cp.asarray(random_images(np.random.default_rng(0), (64, d1, 1), dtype))
    corner = np.array([d0 - 64, d1 - 64])
    offsets = np.array([[[d0 - 40, d1 - 40], [d0 - 20, d1 - 10], [d0 - 50, d1 - 64]]], np.int32)
    size = (32, 32)
    out = _out(images, offsets, size, dtype)
    assert launchers.patches_into(images, cp.asarray(offsets), out) is None
    tail = images[:, -64:, -64:].get()
    np.testing.assert_array_equal(out.get(), reference_patches(tail, offsets - corner, size))
    if dtype == np.float32:
        grad = random_images(np.random.default_rng(1), (1, 3, *size, 1), dtype)
        assert launchers.scatter_into(cp.asarray(grad), cp.asarray(offsets), images) is None
        expected = reference_scatter(grad, offsets - corner, tail.shape)
        np.testing.assert_allclose(images[:, -64:, -64:].get(), expected, rtol=1e-6, atol=1e-6)
        assert float(cp.abs(images[:, :-64]).sum()) == 0.0
        assert float(cp.abs(images[:, -64:, :-64]).sum()) == 0.0
