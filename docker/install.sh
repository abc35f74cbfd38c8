#!/usr/bin/env bash
# The one install procedure of this project. The Dockerfile's builder stage,
# CI (.ci/setup.sh) and the README all run this script, so the image and the
# tests get the same pinned TensorFlow and the patch op compiled against it
# (the op build reads the installed TensorFlow, hence --no-build-isolation).
#
# Three distributions of one version, installed in this order:
#   .          attention-sampling          the library (model_ops, ats; compiles the op)
#   clients/   attention-sampling-client   ats_client, ats_api stubs (no TensorFlow)
#   service/   attention-sampling-serving  the server (needs the other two)
#
#   bash docker/install.sh                # TensorFlow, then the three
#   bash docker/install.sh -e             # the same, all three editable
#   bash docker/install.sh -e ".[test]"   # editable, the library with its test extra (CI)
#   bash docker/install.sh --deps         # TensorFlow and build tools only
#
# The optional argument is the library's pip target: `.` with extras if any.
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

EDITABLE=()
if [ "${1:-}" = -e ]; then
    EDITABLE=(-e)
    shift
fi
LIBRARY="${1:-.}"
if [ $# -gt 1 ] || [[ "$LIBRARY" != . && "$LIBRARY" != ".["* ]]; then
    echo "usage: bash docker/install.sh [--deps | [-e] [.|.[extras]]]" >&2
    exit 2
fi

# 0.1 shipped everything as one distribution named attention-sampling-serving:
# take it out first, or replacing it last would delete the console scripts and
# modules the library and the client have just installed.
if python3 -m pip --disable-pip-version-check show attention-sampling-serving 2>/dev/null |
    grep -q '^Version: 0\.1\.'; then
    "${PIP[@]}" uninstall -y attention-sampling-serving
fi

for target in "$LIBRARY" ./clients ./service; do
    "${PIP[@]}" install --no-build-isolation "${EDITABLE[@]}" "$target"
done
