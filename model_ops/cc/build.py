"""Compile the patch-op library against the TensorFlow that is installed.

Called by setup.py at install time and runnable by hand
(``python model_ops/cc/build.py``). Writes ``model_ops/_patch_ops.so`` and
``model_ops/_build_info.json`` (what it was built against, read by
``model_ops.op_library``). A custom op only runs under the exact
TensorFlow it was compiled with, hence a build per install, not a shipped
binary.

CUDA kernels are compiled in when a CUDA compiler is found:
``ATS_BUILD_CUDA=1`` forces them (failing without nvcc), ``ATS_BUILD_CUDA=0``
disables them, unset means auto: only a CUDA 12 nvcc counts (TensorFlow's
wheels are CUDA 12 builds; the PyPI ``nvidia-cuda-nvcc-cu12`` wheels ship
ptxas but no nvcc, so this means a CUDA 12 toolkit). Compilers are looked
for in ``ATS_NVCC``, then ``PATH``, then ``$CUDA_HOME/bin``.
``ATS_CUDA_ARCHS`` (e.g. ``80,90``) sets the GPU architectures, ``CXX`` the
C++ compiler.

A build whose record already matches (same TensorFlow, same sources under
``cc/``, same CUDA choice) is kept instead of compiled again, so building a
wheel or reinstalling takes seconds; ``--force`` (``force=True``) rebuilds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

CC_DIR = pathlib.Path(__file__).resolve().parent
PACKAGE_DIR = CC_DIR.parent
LIBRARY_NAME = "_patch_ops.so"
BUILD_INFO_NAME = "_build_info.json"
CUDA_MAJOR = "12"
# Half-precision atomicAdd (the gradient kernel) needs compute capability 7.0.
MIN_CUDA_ARCH = 70
WARNING_FLAGS = ["-Wno-deprecated-declarations", "-Wno-interference-size"]


class BuildError(RuntimeError):
    """The op library cannot be built; the message says what to install or set."""


def op_library_version() -> str:
    """Version of the op's interface (attrs, semantics), from ``cc/VERSION``."""
    return (CC_DIR / "VERSION").read_text().strip()


def sources_digest() -> str:
    """SHA-256 over every file under ``cc/`` (paths and contents): the op's
    sources, headers, VERSION and this build script."""
    digest = hashlib.sha256()
    for path in sorted(CC_DIR.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        digest.update(path.relative_to(CC_DIR).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def _find_cxx() -> str:
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise BuildError(
            f"no C++ compiler '{name}' found: the patch op is compiled at install "
            "time. Install g++ (Debian/Ubuntu: apt-get install g++) or set CXX, then "
            "run `pip install --no-build-isolation -e .` again."
        )
    return path


def _tensorflow() -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # imported late: slow, and only the build needs it

    info = tf.sysconfig.get_build_info()
    return {
        "version": tf.__version__,
        "compile_flags": tf.sysconfig.get_compile_flags(),
        "link_flags": tf.sysconfig.get_link_flags(),
        "include": tf.sysconfig.get_include(),
        "cuda_archs": list(info.get("cuda_compute_capabilities", [])),
    }


def _nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _nvcc_candidates() -> list[str]:
    found = [os.environ.get("ATS_NVCC", ""), shutil.which("nvcc") or ""]
    if os.environ.get("CUDA_HOME"):
        found.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    return [c for c in dict.fromkeys(found) if c and os.access(c, os.X_OK)]


def _select_nvcc(mode: str) -> tuple[str, str] | None:
    """(nvcc, version) to build with, or None for a CPU-only build."""
    if mode == "0":
        return None
    versions = [(c, _nvcc_version(c)) for c in _nvcc_candidates()]
    versions = [(c, v) for c, v in versions if v]
    if mode == "1":
        if not versions:
            raise BuildError(
                "ATS_BUILD_CUDA=1 but no nvcc found: install a CUDA 12 toolkit, or set ATS_NVCC or CUDA_HOME"
            )
        return versions[0]
    if mode != "auto":
        raise BuildError(f"ATS_BUILD_CUDA must be 0, 1 or unset, got {mode!r}")
    for nvcc, version in versions:
        if version.split(".")[0] == CUDA_MAJOR:
            return nvcc, version
    return None


def _toolkit_root(nvcc: str) -> pathlib.Path:
    """The toolkit nvcc belongs to, as nvcc reports it (nvcc may be a wrapper script)."""
    dryrun = subprocess.run(
        [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], capture_output=True, text=True
    ).stderr
    match = re.search(r"^#\$ TOP=(.+)$", dryrun, re.MULTILINE)
    if match:
        return pathlib.Path(match.group(1).strip()).resolve()
    return pathlib.Path(nvcc).resolve().parent.parent


def _cuda_dirs(nvcc: str, sub: str) -> list[pathlib.Path]:
    """Existing ``include``/``lib`` dirs of the toolkit nvcc belongs to."""
    root = _toolkit_root(nvcc)
    names = [sub] if sub == "include" else ["lib64", "lib"]
    dirs = [root / n for n in names] + [root / "targets" / "x86_64-linux" / n for n in names]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _cudart_link_flags(nvcc: str) -> list[str]:
    """Static cudart when the toolkit has it, else the shared one.

    These flags go before TensorFlow's: libtensorflow_framework exports cudart
    symbols of its own that would otherwise satisfy ours. The static copy's
    symbols are kept local so that neither runtime interposes on the other.
    """
    lib_dirs = _cuda_dirs(nvcc, "lib")
    for d in lib_dirs:
        if (d / "libcudart_static.a").exists():
            return [
                str(d / "libcudart_static.a"),
                "-Wl,--exclude-libs,libcudart_static.a",
                "-lrt",
                "-ldl",
                "-lpthread",
            ]
    for d in lib_dirs:
        shared = sorted(d.glob("libcudart.so*"))
        if shared:
            return [f"-L{d}", f"-l:{shared[0].name}", f"-Wl,-rpath,{d}"]
    raise BuildError(f"no libcudart found in the CUDA toolkit of {nvcc}")


def _cuda_archs(nvcc: str, tf_archs: list[str]) -> list[int]:
    if os.environ.get("ATS_CUDA_ARCHS"):
        wanted = [int(a) for a in re.split(r"[,; ]+", os.environ["ATS_CUDA_ARCHS"]) if a]
    else:
        wanted = [int(re.sub(r"\D", "", a)) for a in tf_archs] or [70, 80, 90]
    supported = {
        int(a.split("_")[1])
        for a in _run([nvcc, "--list-gpu-code"]).split()
        if a.startswith("sm_") and a.split("_")[1].isdigit()
    }
    archs = sorted({a for a in wanted if a >= MIN_CUDA_ARCH and a in supported})
    if not archs:
        raise BuildError(
            f"no usable GPU architecture among {wanted} for {nvcc} "
            f"(needs >= sm_{MIN_CUDA_ARCH}); set ATS_CUDA_ARCHS"
        )
    return archs


def _compile_gpu(nvcc: str, archs: list[int], out_dir: pathlib.Path) -> pathlib.Path:
    obj = out_dir / "extract_patches_op_gpu.o"
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    includes = [f"-I{d}" for d in _cuda_dirs(nvcc, "include")]
    _run(
        [
            nvcc,
            "-x",
            "cu",
            "-c",
            "-std=c++17",
            "-O3",
            "-Xcompiler",
            "-fPIC",
            *gencode,
            *includes,
            str(CC_DIR / "kernels" / "extract_patches_op_gpu.cu.cc"),
            "-o",
            str(obj),
        ]
    )
    return obj


def _compile_cpu(cxx: str, flags: list[str], source: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    obj = out_dir / (source.stem + ".o")
    _run([cxx, "-c", "-O3", "-fPIC", *flags, *WARNING_FLAGS, str(source), "-o", str(obj)])
    return obj


def _compiler_version(cxx: str) -> str:
    return _run([cxx, "--version"]).splitlines()[0]


def _up_to_date(out: pathlib.Path, wanted: dict) -> dict | None:
    """The existing build record when the library beside it was built as
    ``wanted`` asks (every key of ``wanted`` equal), else None."""
    try:
        info = json.loads((out / BUILD_INFO_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not (out / LIBRARY_NAME).is_file() or not isinstance(info, dict):
        return None
    return info if all(info.get(key) == value for key, value in wanted.items()) else None


def build_op_library(
    output_dir: pathlib.Path | str | None = None,
    cuda: str | None = None,
    verbose: bool = True,
    force: bool = False,
) -> dict:
    """Compile and link the op library; returns the build info also written as JSON.

    ``cuda`` is "0", "1" or "auto" and defaults to ``ATS_BUILD_CUDA`` (else auto).
    Unless ``force``, a library already built for the installed TensorFlow,
    these sources and this CUDA choice (compiler, release, architectures) is
    kept and its record returned.
    """
    out = pathlib.Path(output_dir) if output_dir is not None else PACKAGE_DIR
    cxx = _find_cxx()
    tf = _tensorflow()
    selected = _select_nvcc(cuda or os.environ.get("ATS_BUILD_CUDA", "auto"))
    archs: list[int] = _cuda_archs(selected[0], tf["cuda_archs"]) if selected is not None else []
    wanted = {
        "tensorflow_version": tf["version"],
        "op_library_version": op_library_version(),
        "sources_sha256": sources_digest(),
        "cuda": selected is not None,
        "cuda_version": selected[1] if selected else None,
        "cuda_archs": archs,
    }
    if not force:
        current = _up_to_date(out, wanted)
        if current is not None:
            if verbose:
                print(f"{LIBRARY_NAME} is up to date (TensorFlow {tf['version']}): not rebuilt", flush=True)
            return current
    flags = [*tf["compile_flags"], f"-I{CC_DIR / 'kernels'}"]
    link: list[str] = []
    if selected is not None:
        cuda_include = os.path.join(tf["include"], "third_party", "gpus", "cuda", "include")
        flags += [
            "-DGOOGLE_CUDA=1",
            f"-I{cuda_include}",
            *[f"-I{d}" for d in _cuda_dirs(selected[0], "include")],
        ]
        link += _cudart_link_flags(selected[0])
    link += tf["link_flags"]
    sources = sorted((CC_DIR / "ops").glob("*.cc")) + sorted(
        s for s in (CC_DIR / "kernels").glob("*.cc") if not s.name.endswith(".cu.cc")
    )
    if verbose:
        kind = f"CUDA {selected[1]} (sm_{', sm_'.join(map(str, archs))})" if selected else "CPU only"
        print(f"building {LIBRARY_NAME} for TensorFlow {tf['version']}, {kind}", flush=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool,
    ):
        tmp_dir = pathlib.Path(tmp)
        jobs = [pool.submit(_compile_cpu, cxx, flags, s, tmp_dir) for s in sources]
        if selected is not None:
            jobs.append(pool.submit(_compile_gpu, selected[0], archs, tmp_dir))
        objects = [str(j.result()) for j in jobs]
        out.mkdir(parents=True, exist_ok=True)
        library = out / LIBRARY_NAME
        # Link beside the target and rename over it: processes that have the old
        # library mapped keep their inode instead of seeing it rewritten.
        staged = out / f".{LIBRARY_NAME}.{os.getpid()}.tmp"
        try:
            _run([cxx, "-shared", "-fPIC", "-O3", *objects, "-o", str(staged), *link])
            os.replace(staged, library)
        finally:
            staged.unlink(missing_ok=True)
    info = {**wanted, "compiler": _compiler_version(cxx)}
    (out / BUILD_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    if verbose:
        print(f"wrote {library}", flush=True)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Compile the patch op against the installed TensorFlow.")
    parser.add_argument("--force", action="store_true", help="rebuild even if the build record matches")
    args = parser.parse_args(argv)
    try:
        build_op_library(force=args.force)
    except BuildError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
