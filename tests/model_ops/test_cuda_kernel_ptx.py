"""The CUDA kernels compile with the local nvcc (no GPU needed): the TF
launchers, and the header alone with no TensorFlow or launcher code, the way
CuPy's RawModule compiles it on a GPU machine without TensorFlow."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

from tests.support import REPO_ROOT

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="no nvcc on this machine")
KERNELS = REPO_ROOT / "model_ops" / "cc" / "kernels"
FORWARD = [
    ("unsigned char", "unsigned char"),
    ("unsigned short", "unsigned short"),
    ("__half", "__half"),
    ("float", "float"),
    ("double", "double"),
    ("unsigned char", "float"),
    ("unsigned short", "float"),
]
GRAD = ["__half", "float", "double"]


def compile_ptx(source: pathlib.Path, out: pathlib.Path) -> str:
    """PTX for the oldest architecture >= 7.0 this nvcc supports, warnings as errors."""
    archs = subprocess.run(
        [NVCC, "--list-gpu-arch"], capture_output=True, text=True, check=True
    ).stdout.split()
    arch = min((a for a in archs if int(re.sub(r"\D", "", a)) >= 70), key=lambda a: int(re.sub(r"\D", "", a)))
    subprocess.run(
        [
            NVCC,
            "-x",
            "cu",
            "-ptx",
            "-std=c++17",
            f"-arch={arch}",
            "-Werror",
            "all-warnings",
            f"-I{KERNELS}",
            str(source),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.read_text()


def entries(ptx: str) -> list[str]:
    return re.findall(r"\.entry\s+(\w+)\(", ptx)


def test_tf_launchers_compile_every_kernel(tmp_path):
    names = entries(compile_ptx(KERNELS / "extract_patches_op_gpu.cu.cc", tmp_path / "op.ptx"))
    assert sum("extract_patches_kernel" in n for n in names) == len(FORWARD)
    assert sum("extract_patches_grad_kernel" in n for n in names) == len(GRAD)


def test_header_compiles_standalone(tmp_path):
    instances = [f"ats::extract_patches_kernel<{i}, {o}>" for i, o in FORWARD]
    instances += [f"ats::extract_patches_grad_kernel<{t}>" for t in GRAD]
    source = tmp_path / "standalone.cu"
    source.write_text(
        '#include "extract_patches_gpu.cu.h"\n'
        "void* kernels[] = {\n" + "".join(f"    (void*)&{name},\n" for name in instances) + "};\n"
    )
    names = entries(compile_ptx(source, tmp_path / "standalone.ptx"))
    assert len(names) == len(instances)
