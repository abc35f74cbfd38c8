#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, idempotently:
# system packages the tests use (Prometheus and promtool), TensorFlow first, then
# the project itself without build isolation so the patch op is compiled against
# that very TensorFlow, and the gRPC stubs are generated.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The Debian package starts a system Prometheus; tests start their own on loopback.
    $SUDO systemctl stop prometheus >/dev/null 2>&1 || $SUDO service prometheus stop >/dev/null 2>&1 || true
fi

# The project's one install procedure, shared with the Dockerfile.
bash docker/install.sh -e ".[test]"
