"""Generate the Python gRPC stubs from the .proto files into a chosen directory.

This directory is the source of truth and the include root: the .proto files
live at ``ats_api/v1/*.proto`` below it, so protoc writes imports as
``from ats_api.v1 import xxx_pb2``, exactly the installed package name, and
the stubs land in ``<out_dir>/ats_api/v1/``. The client distribution
(``clients/setup.py``) runs this at build time with ``out_dir=clients``;
the generated files are git-ignored, never edit them.

    python protos/build.py clients        # what the client build does
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent
PROTO_DIR = ROOT / "ats_api" / "v1"
# Every API the server speaks, each generated into the same-named package.
PROTO_DIRS = (PROTO_DIR, ROOT / "ats_api" / "oip" / "v2")


def generate_stubs(out_dir: pathlib.Path | str) -> list[pathlib.Path]:
    """Run grpc_tools.protoc on every .proto; returns the generated files.

    ``out_dir`` is the import root the stubs are written under (it must hold
    the ``ats_api/v1/`` package folders, whose ``__init__.py`` are committed).
    """
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency

    out = pathlib.Path(out_dir).resolve()
    protos = sorted(p for d in PROTO_DIRS for p in d.glob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    package_dirs = [out / d.relative_to(ROOT) for d in PROTO_DIRS]
    for package_dir in package_dirs:
        package_dir.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(p.name for p in protos))
    return sorted(p for d in package_dirs for p in d.glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the ats.v1 Python stubs.")
    parser.add_argument("out_dir", type=pathlib.Path, help="import root to write ats_api/v1/*_pb2*.py under")
    args = parser.parse_args(argv)
    for path in generate_stubs(args.out_dir):
        print(path, file=sys.stdout)


if __name__ == "__main__":
    main()
