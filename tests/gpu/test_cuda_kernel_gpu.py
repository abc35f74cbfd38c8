"""The CUDA kernels of extract_patches_gpu.cu.h on a real GPU, without TensorFlow.

Compiled through CuPy's RawModule (NVRTC) straight from the header, checked
against the NumPy oracle on random inputs, every dtype pair, 1-D to 3-D.
Needs a GPU and CuPy (fails without), so the default test run does not collect tests/gpu/
(pyproject's norecursedirs); on a GPU machine run ``python -m pytest tests/gpu``.
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
    cp,
    forward_name,
    geometry,
    grad_name,
    gradient_cases,
    nvrtc_launch,
    nvrtc_module,
    require_gpu,
)
from tests.model_ops.test_extract_patches_reference import (
    random_case,
    reference_patches,
    reference_scatter,
)

NAMES = tuple([forward_name(i, o) for i, o in PAIRS] + [grad_name(d) for d, _ in FLOAT_TOLERANCES])

require_gpu()


def gpu_patches(images, offsets, size, fill=0.0, out_dtype=None, scale=1.0, threads_x=0, max_blocks=0):
    out_dtype = np.dtype(out_dtype or images.dtype)
    x, o = cp.asarray(images), cp.asarray(offsets, dtype=cp.int32)
    out = cp.empty((images.shape[0], offsets.shape[1], *size, images.shape[-1]), out_dtype)
    g = geometry(images.shape, offsets.shape[1], size)
    kernel = nvrtc_module(NAMES).get_function(forward_name(images.dtype, out_dtype))
    args = (x, o, out, *map(np.int32, g), np.float32(scale), np.float32(fill))
    nvrtc_launch(kernel, g, args, threads_x, max_blocks)
    return out


def gpu_scatter(grad, offsets, image_shape, scale=1.0, max_blocks=0):
    g_arr, o = cp.asarray(grad), cp.asarray(offsets, dtype=cp.int32)
    image = cp.zeros(image_shape, grad.dtype)
    g = geometry(image_shape, offsets.shape[1], grad.shape[2:-1])
    kernel = nvrtc_module(NAMES).get_function(grad_name(grad.dtype))
    nvrtc_launch(kernel, g, (g_arr, o, image, *map(np.int32, g), np.float32(scale)), max_blocks=max_blocks)
    return image


@pytest.mark.parametrize("max_blocks", [0, 1, 3])
@pytest.mark.parametrize("threads_x", [0, 32, 256])
@pytest.mark.parametrize("n_dims", [1, 2, 3])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{np.dtype(p[0])}-{np.dtype(p[1])}")
def test_forward_kernel_matches_numpy(pair, n_dims, threads_x, max_blocks):
    in_dtype, out_dtype = pair
    rng = np.random.default_rng([n_dims, threads_x])
    converts = np.dtype(in_dtype) != np.dtype(out_dtype)
    scale = 1 / 255 if converts else 1.0
    for _ in range(8):
        images, offsets, size = random_case(rng, n_dims, in_dtype)
        got = gpu_patches(images, offsets, size, 3.0, out_dtype, scale, threads_x, max_blocks).get()
        np.testing.assert_array_equal(got, reference_patches(images, offsets, size, 3, out_dtype, scale))


@pytest.mark.parametrize("max_blocks", [0, 1, 3])
@pytest.mark.parametrize("n_dims", [1, 2, 3])
@pytest.mark.parametrize("dtype, rtol", FLOAT_TOLERANCES)
def test_gradient_kernel_matches_numpy(dtype, rtol, n_dims, max_blocks):
    for images, offsets, grad in gradient_cases(n_dims, dtype):
        got = gpu_scatter(grad, offsets, images.shape, 0.5, max_blocks).get()
        np.testing.assert_allclose(
            got, reference_scatter(grad, offsets, images.shape, 0.5), rtol=rtol, atol=rtol
        )
