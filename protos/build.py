"""Generate the Python gRPC stubs from the .proto files (run at install time).

The .proto files live at ``ats_api/v1/*.proto`` relative to this directory, and
this directory is the include root, so protoc writes imports as
``from ats_api.v1 import xxx_pb2``: exactly the installed package name, no
rewriting needed. Generated files are git-ignored; never edit them.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent
PROTO_DIR = ROOT / "ats_api" / "v1"


def generate_stubs() -> list[pathlib.Path]:
    """Run grpc_tools.protoc on every .proto; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency (pyproject build-system)

    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    well_known = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *(str(p.relative_to(ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(p.name for p in protos))
    return sorted(PROTO_DIR.glob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate_stubs():
        print(path.relative_to(ROOT), file=sys.stdout)
