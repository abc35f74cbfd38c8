"""Build hooks that pyproject.toml cannot express.

Two things are generated at install time, never committed:
- the compiled patch-op library (``model_ops/_patch_ops.so``), built against
  the TensorFlow that is installed (see ``model_ops/cc/build.py``);
- the gRPC/protobuf stubs from ``protos/`` (see ``protos/build.py``).
Both are written into the source tree so that editable and regular installs
behave the same.
"""

from __future__ import annotations

import importlib.util
import pathlib

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).resolve().parent


def _load(path: str):
    """Import a build helper by path: the packages are not importable yet."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem + "_build", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithGenerated(build_py):
    """Generate stubs and compile the op before the Python files are collected."""

    def run(self) -> None:
        _load("protos/build.py").generate_stubs()
        _load("model_ops/cc/build.py").build_op_library()
        super().run()


PACKAGES = find_packages(
    include=["model_ops", "model_ops.*", "service", "service.*"], exclude=["model_ops.compat*"]
)
PACKAGES += find_packages("model_ops/compat", include=["ats", "ats.*"])
PACKAGES += find_packages("protos", include=["ats_api", "ats_api.*"])
PACKAGES += find_packages("clients", include=["ats_client", "ats_client.*"])

setup(
    packages=PACKAGES,
    package_dir={
        "ats": "model_ops/compat/ats",
        "ats_api": "protos/ats_api",
        "ats_client": "clients/ats_client",
    },
    package_data={
        "model_ops": ["_patch_ops*.so", "_build_info.json", "cc/**/*"],
        "ats_api": ["v1/*.proto"],
    },
    cmdclass={"build_py": BuildWithGenerated},
)
