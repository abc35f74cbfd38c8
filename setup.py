"""Build hook of the library (``attention-sampling``) that pyproject.toml cannot express.

The compiled patch-op library (``model_ops/_patch_ops.so``) is built at install
time against the TensorFlow that is installed (see ``model_ops/cc/build.py``)
and written into the source tree, so editable and regular installs behave the
same. A library whose build record already matches the installed TensorFlow,
the op sources and the CUDA choice is kept, not compiled again.

The client (``clients/``) and the server (``service/``) are separate
distributions with their own pyproject.toml; ``docker/install.sh`` installs
the three in order.
"""

from __future__ import annotations

import importlib.util
import pathlib

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

ROOT = pathlib.Path(__file__).resolve().parent


def _load(path: str):
    """Import a build helper by path: the packages are not importable yet."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem + "_build", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithOp(build_py):
    """Compile the op (unless up to date) before the Python files are collected."""

    def run(self) -> None:
        _load("model_ops/cc/build.py").build_op_library()
        super().run()


class BinaryDistribution(Distribution):
    """The library holds a compiled op, so its wheel is not pure Python."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tag the wheel for this platform but any Python 3: the op links to
    TensorFlow, not to Python, and that TensorFlow is pinned in the dependencies."""

    def get_tag(self) -> tuple[str, str, str]:
        return ("py3", "none", super().get_tag()[2])


PACKAGES = find_packages(include=["model_ops", "model_ops.*"], exclude=["model_ops.compat*"])
PACKAGES += find_packages("model_ops/compat", include=["ats", "ats.*"])

setup(
    packages=PACKAGES,
    package_dir={"ats": "model_ops/compat/ats"},
    package_data={"model_ops": ["_patch_ops*.so", "_build_info.json", "cc/**/*"]},
    exclude_package_data={"model_ops": ["cc/**/__pycache__/*", "cc/**/*.pyc"]},
    cmdclass={"build_py": BuildWithOp, "bdist_wheel": PlatformWheel},
    distclass=BinaryDistribution,
)
