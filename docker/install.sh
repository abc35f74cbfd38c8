#!/usr/bin/env bash
# The one install procedure of this project. The Dockerfile's builder stage,
# CI (.ci/setup.sh) and the README all run this script, so the image and the
# tests get the same pinned TensorFlow and the patch op compiled against it
# (the op build reads the installed TensorFlow, hence --no-build-isolation).
#
#   bash docker/install.sh              # TensorFlow, then the project (`.`)
#   bash docker/install.sh -e ".[test]" # the same, editable, with test extras
#   bash docker/install.sh --deps       # TensorFlow and build tools only
#
# ATS_BUILD_CUDA=1 installs TensorFlow's CUDA 12 wheels and compiles the op's
# CUDA kernel in. That takes a CUDA 12 toolkit's nvcc (ATS_NVCC, PATH or
# CUDA_HOME; the GPU image's builder is a CUDA devel image): PyPI's CUDA
# wheels carry ptxas but no nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."

TENSORFLOW="tensorflow==2.21.0"
BUILD_TOOLS=("setuptools>=69" "wheel" "grpcio-tools>=1.66")
if [ "${ATS_BUILD_CUDA:-0}" = 1 ]; then
    TENSORFLOW="tensorflow[and-cuda]==2.21.0"
fi

PIP=(python3 -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "$TENSORFLOW" "${BUILD_TOOLS[@]}"
if [ "${1:-}" = --deps ]; then
    exit 0
fi
"${PIP[@]}" install --no-build-isolation "${@:-.}"
