#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, idempotently:
# Prometheus and promtool (the tests start real ones on loopback), then
# TensorFlow and the project's three distributions (library, client, server),
# editable and without build isolation, so the patch op is compiled against
# that very TensorFlow and the client's gRPC stubs are generated.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup_prometheus.sh
# The project's one install procedure, shared with the Dockerfile; the library
# brings the test extra (pytest, ruff, mypy, ...).
bash docker/install.sh -e ".[test]"
