"""The CUDA kernels of extract_patches_gpu.cu.h on a real GPU, without TensorFlow.

Compiled through CuPy's RawModule (NVRTC) straight from the header, checked
against the NumPy oracle on random inputs, every dtype pair, 1-D to 3-D. Run
as a script (``python tests/gpu/test_cuda_kernel_gpu.py``) it also prints the
kernels' bandwidth next to a device-to-device copy of the same bytes.
Needs a GPU and CuPy, so the default test run does not collect tests/gpu/
(pyproject's norecursedirs); on a GPU machine run ``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import functools
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tests.model_ops.test_extract_patches_reference import (
    DTYPES,
    random_case,
    random_images,
    reference_patches,
    reference_scatter,
)

HEADER = (
    pathlib.Path(__file__).resolve().parents[2] / "model_ops" / "cc" / "kernels" / "extract_patches_gpu.cu.h"
)
C_TYPES = {
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.float16): "__half",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
PAIRS = [(d, d) for d in DTYPES] + [(np.uint8, np.float32), (np.uint16, np.float32)]
FLOATS = [np.float16, np.float32, np.float64]


def _gpu():
    """CuPy when a GPU is usable, else None."""
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # no CuPy, no driver or no device: all mean no GPU here
        return None


cp = _gpu()
needs_gpu = pytest.mark.skipif(cp is None, reason="no GPU with CuPy on this machine")


def _forward_name(in_dtype, out_dtype) -> str:
    return f"ats::extract_patches_kernel<{C_TYPES[np.dtype(in_dtype)]}, {C_TYPES[np.dtype(out_dtype)]}>"


def _grad_name(dtype) -> str:
    return f"ats::extract_patches_grad_kernel<{C_TYPES[np.dtype(dtype)]}>"


@functools.cache
def _module():
    names = [_forward_name(i, o) for i, o in PAIRS] + [_grad_name(d) for d in FLOATS]
    include = pathlib.Path(cp.cuda.get_cuda_path() or "") / "include"
    options = ("-std=c++17",) + ((f"-I{include}",) if include.is_dir() else ())
    return cp.RawModule(code=HEADER.read_text(), options=options, name_expressions=names)


def _geometry(image_shape, n_patches, size):
    """Kernel scalars (batch, N, n, D0..D2, C, P0..P2), padded in front like the header."""
    n = len(image_shape) - 2
    dims = [1] * (3 - n) + list(image_shape[1:-1])
    patch = [1] * (3 - n) + list(size)
    return [np.int32(v) for v in (image_shape[0], n_patches, n, *dims, image_shape[-1], *patch)]


def _launch(kernel, geometry, args, threads_x: int = 0):
    """One thread per row value; rows over blockDim.y (as launch_shape in the header)."""
    g = [int(v) for v in geometry]
    length = g[9] * g[6]  # P2 * C
    rows = g[0] * g[1] * g[7] * g[8]
    if rows == 0 or length == 0:
        return
    if not threads_x:
        threads_x = 32
        while threads_x < length and threads_x < 256:
            threads_x *= 2
    threads_y = max(1, 256 // threads_x)
    kernel(((rows + threads_y - 1) // threads_y,), (threads_x, threads_y), args)


def gpu_patches(images, offsets, size, fill=0.0, out_dtype=None, scale=1.0, threads_x=0):
    out_dtype = np.dtype(out_dtype or images.dtype)
    x, o = cp.asarray(images), cp.asarray(offsets, dtype=cp.int32)
    out = cp.empty((images.shape[0], offsets.shape[1], *size, images.shape[-1]), out_dtype)
    geometry = _geometry(images.shape, offsets.shape[1], size)
    kernel = _module().get_function(_forward_name(images.dtype, out_dtype))
    _launch(kernel, geometry, (x, o, out, *geometry, np.float32(scale), np.float32(fill)), threads_x)
    return out


def gpu_scatter(grad, offsets, image_shape, scale=1.0):
    g, o = cp.asarray(grad), cp.asarray(offsets, dtype=cp.int32)
    image = cp.zeros(image_shape, grad.dtype)
    geometry = _geometry(image_shape, offsets.shape[1], grad.shape[2:-1])
    kernel = _module().get_function(_grad_name(grad.dtype))
    _launch(kernel, geometry, (g, o, image, *geometry, np.float32(scale)))
    return image


@needs_gpu
@pytest.mark.parametrize("threads_x", [0, 32, 256])
@pytest.mark.parametrize("n_dims", [1, 2, 3])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{np.dtype(p[0])}-{np.dtype(p[1])}")
def test_forward_kernel_matches_numpy(pair, n_dims, threads_x):
    in_dtype, out_dtype = pair
    rng = np.random.default_rng([n_dims, threads_x])
    converts = np.dtype(in_dtype) != np.dtype(out_dtype)
    scale = 1 / 255 if converts else 1.0
    for _ in range(8):
        images, offsets, size = random_case(rng, n_dims, in_dtype)
        got = gpu_patches(images, offsets, size, 3.0, out_dtype, scale, threads_x).get()
        np.testing.assert_array_equal(got, reference_patches(images, offsets, size, 3, out_dtype, scale))


@needs_gpu
@pytest.mark.parametrize("n_dims", [1, 2, 3])
@pytest.mark.parametrize("dtype, rtol", [(np.float16, 1e-2), (np.float32, 1e-5), (np.float64, 1e-12)])
def test_gradient_kernel_matches_numpy(dtype, rtol, n_dims):
    rng = np.random.default_rng(n_dims)
    for _ in range(8):
        images, offsets, size = random_case(rng, n_dims, dtype)
        grad = random_images(rng, (*offsets.shape[:2], *size, images.shape[-1]), dtype)
        got = gpu_scatter(grad, offsets, images.shape, 0.5).get()
        np.testing.assert_allclose(
            got, reference_scatter(grad, offsets, images.shape, 0.5), rtol=rtol, atol=rtol
        )


def _median_ms(fn, repeats: int = 50) -> float:
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def bandwidth_table() -> str:
    """Markdown: kernel vs device-to-device copy of the same bytes (read + write)."""
    rng = np.random.default_rng(0)
    rows = [
        "| input -> output | patches | kernel ms | GB/s | D2D copy GB/s | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for in_dtype, out_dtype in [(np.uint8, np.uint8), (np.float32, np.float32), (np.uint8, np.float32)]:
        images = random_images(rng, (1, 4096, 4096, 3), in_dtype)
        for n_patches, size in [(16, 64), (16, 256), (1024, 256)]:
            offsets = rng.integers(-size // 2, 4096 - size // 2, size=(1, n_patches, 2)).astype(np.int32)
            x, o = cp.asarray(images), cp.asarray(offsets)
            out = cp.empty((1, n_patches, size, size, 3), out_dtype)
            geometry = _geometry(images.shape, n_patches, (size, size))
            kernel = _module().get_function(_forward_name(in_dtype, out_dtype))
            args = (x, o, out, *geometry, np.float32(1 / 255), np.float32(0))
            ms = _median_ms(functools.partial(_launch, kernel, geometry, args))
            moved = out.size * (np.dtype(in_dtype).itemsize + np.dtype(out_dtype).itemsize)
            src, dst = cp.empty(moved // 2, cp.uint8), cp.empty(moved // 2, cp.uint8)
            copy_ms = _median_ms(functools.partial(dst.__setitem__, Ellipsis, src))
            gbs, copy_gbs = moved / ms / 1e6, moved / copy_ms / 1e6
            rows.append(
                f"| {np.dtype(in_dtype)} -> {np.dtype(out_dtype)} | {n_patches} x "
                f"{size}x{size} | {ms:.4f} | {gbs:.0f} | {copy_gbs:.0f} | "
                f"{gbs / copy_gbs:.2f} |"
            )
    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return f"GPU: {device}, CuPy {cp.__version__}\n\n" + "\n".join(rows)


if __name__ == "__main__":
    if cp is None:
        sys.exit("no GPU with CuPy on this machine")
    failed = pytest.main([__file__, "-q"])
    if failed:
        sys.exit(failed)
    print(bandwidth_table())
