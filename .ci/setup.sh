#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, idempotently:
# Prometheus and promtool (the tests start real ones on loopback), then
# TensorFlow and the project itself without build isolation, so the patch op is
# compiled against that very TensorFlow and the gRPC stubs are generated.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup_prometheus.sh
# The project's one install procedure, shared with the Dockerfile.
bash docker/install.sh -e ".[test]"
