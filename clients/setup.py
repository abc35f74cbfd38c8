"""Build hook of the client (``attention-sampling-client``) that pyproject.toml cannot express.

The ``ats_api.v1`` stubs are generated at build time from the repository's
``protos/`` (``protos/build.py``, the .proto files' one home) into
``clients/ats_api/v1/``, so editable and regular installs behave the same.
pip builds a local directory in place, so ``../protos`` is reachable from
``pip install ./clients``; a copy of ``clients/`` alone cannot be built.

The stubs refuse to import under a grpcio or protobuf older than the
grpcio-tools that generated them, so those two floors follow the build's
grpcio-tools.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib
import re

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTOS = HERE.parent / "protos"
# Floors when grpcio-tools is not installed (its metadata gives the real ones).
GRPCIO_FLOOR = "1.66"
PROTOBUF_FLOOR = "5.26"


def _generator():
    """protos/build.py, imported by path; a clear error when there is no protos/."""
    script = PROTOS / "build.py"
    if not script.is_file():
        raise SystemExit(
            f"error: {script} not found: attention-sampling-client generates its gRPC stubs from the "
            "repository's protos/ directory. Build it from a full checkout (pip install ./clients), "
            "not from a copy of clients/ or an sdist."
        )
    spec = importlib.util.spec_from_file_location("ats_protos_build", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated_code_floors() -> tuple[str, str]:
    """(grpcio, protobuf) minimum versions the stubs of this build's grpcio-tools need."""
    try:
        tools = importlib.metadata.version("grpcio-tools")
        requires = importlib.metadata.requires("grpcio-tools") or []
    except importlib.metadata.PackageNotFoundError:
        return GRPCIO_FLOOR, PROTOBUF_FLOOR
    protobuf = PROTOBUF_FLOOR
    for requirement in requires:
        if re.match(r"protobuf\b", requirement):
            floor = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", requirement)
            protobuf = floor.group(1) if floor else protobuf
    return tools, protobuf


class BuildWithStubs(build_py):
    """Generate the stubs before the Python files are collected."""

    def run(self) -> None:
        _generator().generate_stubs(HERE)
        super().run()


GRPCIO, PROTOBUF = _generated_code_floors()

setup(
    packages=find_packages(include=["ats_client", "ats_client.*", "ats_api", "ats_api.*"]),
    package_data={"ats_api.v1": ["*.pyi"], "ats_api.oip.v2": ["*.pyi"]},
    install_requires=[
        f"grpcio>={GRPCIO}",
        "grpcio-health-checking>=1.66",
        # brings googleapis-common-protos (google.rpc.*), read by ats_client.client
        "grpcio-status>=1.66",
        f"protobuf>={PROTOBUF}",
        "numpy>=1.26",
        "pillow>=10",
    ],
    cmdclass={"build_py": BuildWithStubs},
)
