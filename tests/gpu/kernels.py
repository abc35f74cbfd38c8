"""The patch op's CUDA code, callable from Python on a GPU without TensorFlow.

Two ways in, both compiled on the GPU machine: the kernels of
extract_patches_gpu.cu.h through CuPy's RawModule (NVRTC), and the op's
launchers (extract_patches_op_gpu.cu.cc, the host code TensorFlow's kernel
calls) built by nvcc as TensorFlow's build builds them, reached through
ctypes. Used by the tests in this folder and by bench/bench_gpu_kernel.py.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
import shutil
import subprocess

import numpy as np

from tests.model_ops.test_extract_patches_reference import DTYPES, random_case, random_images

ROOT = pathlib.Path(__file__).resolve().parents[2]
KERNELS = ROOT / "model_ops" / "cc" / "kernels"
SHIM = pathlib.Path(__file__).resolve().parent / "launcher_shim.cu"
C_TYPES = {
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.float16): "__half",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}
# The (input, output) dtype pairs the op registers, and gradient tolerances.
PAIRS = [(d, d) for d in DTYPES] + [(np.uint8, np.float32), (np.uint16, np.float32)]
FLOAT_TOLERANCES = [(np.float16, 1e-2), (np.float32, 1e-5), (np.float64, 1e-12)]
# ats::GpuType, in the enum's order (extract_patches_gpu.h).
GPU_TYPES = {np.dtype(t): i for i, t in enumerate([np.uint8, np.uint16, np.float16, np.float32, np.float64])}


def _cupy():
    """CuPy when a GPU is usable, else None."""
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # no CuPy, no driver or no device: all mean no GPU here
        return None


cp = _cupy()


def require_gpu() -> None:
    """Fail a test module's collection where there is no GPU with CuPy: the
    folder is collected only when named, so a skip would read as a pass."""
    if cp is None:
        import pytest

        pytest.fail("tests/gpu needs a CUDA GPU with CuPy (and nvcc for the launchers)", pytrace=False)


def gradient_cases(n_dims: int, dtype, count: int = 8):
    """Random ``(images, offsets, grad)`` for the gradient's tests (grad shaped like the patches)."""
    rng = np.random.default_rng(n_dims)
    for _ in range(count):
        images, offsets, size = random_case(rng, n_dims, dtype)
        yield images, offsets, random_images(rng, (*offsets.shape[:2], *size, images.shape[-1]), dtype)


def geometry(image_shape, n_patches, size) -> list[int]:
    """Kernel scalars (batch, N, n, D0..D2, C, P0..P2), padded in front like the header."""
    n = len(image_shape) - 2
    dims = [1] * (3 - n) + list(image_shape[1:-1])
    patch = [1] * (3 - n) + list(size)
    return [int(v) for v in (image_shape[0], n_patches, n, *dims, image_shape[-1], *patch)]


# --- the kernels through NVRTC -------------------------------------------------


def forward_name(in_dtype, out_dtype) -> str:
    return f"ats::extract_patches_kernel<{C_TYPES[np.dtype(in_dtype)]}, {C_TYPES[np.dtype(out_dtype)]}>"


def grad_name(dtype) -> str:
    return f"ats::extract_patches_grad_kernel<{C_TYPES[np.dtype(dtype)]}>"


@functools.cache
def nvrtc_module(names: tuple[str, ...]):
    include = pathlib.Path(cp.cuda.get_cuda_path() or "") / "include"
    options = ("-std=c++17",) + ((f"-I{include}",) if include.is_dir() else ())
    code = (KERNELS / "extract_patches_gpu.cu.h").read_text()
    return cp.RawModule(code=code, options=options, name_expressions=list(names))


def nvrtc_launch(kernel, g: list[int], args, threads_x: int = 0, max_blocks: int = 0) -> None:
    """One thread per row value; rows over blockDim.y (as launch_shape in the header);
    ``max_blocks`` caps the grid, so that blocks stride over the rows."""
    length = g[9] * g[6]  # P2 * C
    rows = g[0] * g[1] * g[7] * g[8]
    if rows == 0 or length == 0:
        return
    if not threads_x:
        threads_x = 32
        while threads_x < length and threads_x < 256:
            threads_x *= 2
    threads_y = max(1, 256 // threads_x)
    blocks = (rows + threads_y - 1) // threads_y
    kernel((min(blocks, max_blocks or blocks),), (threads_x, threads_y), args)


# --- the launchers built by nvcc -----------------------------------------------


def build_launchers(out_dir: pathlib.Path) -> pathlib.Path:
    """nvcc-compile the op's launchers plus the extern "C" shim for this GPU."""
    nvcc = shutil.which("nvcc") or str(pathlib.Path(cp.cuda.get_cuda_path() or "") / "bin" / "nvcc")
    arch = cp.cuda.Device().compute_capability
    library = out_dir / "libats_patch_launchers.so"
    command = [nvcc, "-x", "cu", "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC"]
    command += [f"-gencode=arch=compute_{arch},code=sm_{arch}", f"-I{KERNELS}"]
    command += [str(KERNELS / "extract_patches_op_gpu.cu.cc"), str(SHIM), "-o", str(library)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return library


class Launchers:
    """ctypes front of the nvcc-built launchers; arrays are CuPy arrays."""

    def __init__(self, library: pathlib.Path):
        self._lib = ctypes.CDLL(str(library))
        p, f = ctypes.c_void_p, ctypes.c_float
        self._lib.ats_launch_extract_patches.restype = ctypes.c_char_p
        self._lib.ats_launch_extract_patches.argtypes = [ctypes.c_int] * 2 + [p] * 4 + [f, f, p]
        self._lib.ats_launch_extract_patches_grad.restype = ctypes.c_char_p
        self._lib.ats_launch_extract_patches_grad.argtypes = [ctypes.c_int] + [p] * 4
        self._lib.ats_launch_extract_patches_grad.argtypes += [ctypes.c_longlong, f, p]

    @staticmethod
    def _scalars(g: list[int]):
        return (ctypes.c_int * 10)(*g)

    def patches_into(self, images, offsets, out, scale=1.0, fill=0.0, stream=None) -> str | None:
        """Launch the forward launcher; the CUDA error string, or None."""
        g = geometry(images.shape, offsets.shape[1], out.shape[2:-1])
        error = self._lib.ats_launch_extract_patches(
            GPU_TYPES[images.dtype],
            GPU_TYPES[out.dtype],
            self._scalars(g),
            images.data.ptr,
            offsets.data.ptr,
            out.data.ptr,
            scale,
            fill,
            stream.ptr if stream is not None else None,
        )
        return error.decode() if error else None

    def scatter_into(self, grad, offsets, image_grad, scale=1.0, stream=None) -> str | None:
        """Launch the gradient launcher (it zeroes image_grad first); the error, or None."""
        g = geometry(image_grad.shape, offsets.shape[1], grad.shape[2:-1])
        error = self._lib.ats_launch_extract_patches_grad(
            GPU_TYPES[grad.dtype],
            self._scalars(g),
            grad.data.ptr,
            offsets.data.ptr,
            image_grad.data.ptr,
            image_grad.size,
            scale,
            stream.ptr if stream is not None else None,
        )
        return error.decode() if error else None
