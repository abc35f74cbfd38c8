# syntax=docker/dockerfile:1
# Attention-sampling inference server.
#   docker build -t attention-sampling-serving .                      # CPU
#   docker build --build-arg VARIANT=gpu -t attention-sampling-serving:gpu .
# The builder installs the library (compiling the patch op against the very
# TensorFlow that the runtime stage then runs), the client and the server into
# one virtual environment, which the runtime copies, not rebuilds.
# VARIANT picks one system per role; BuildKit builds only the stages the
# target uses, so the CPU image never pulls a CUDA image.
ARG VARIANT=cpu
# The GPU builder and runtime share one CUDA release and one Ubuntu (hence
# one Python), so the venv built in the one runs in the other.
ARG CUDA_TAG=12.6.3
ARG CUDA_OS=ubuntu24.04

# Runtime systems: a Python and nothing else.
FROM python:3.11-slim-bookworm AS system-cpu

FROM nvidia/cuda:${CUDA_TAG}-base-${CUDA_OS} AS system-gpu
# The CUDA libraries themselves come from TensorFlow's CUDA 12 wheels.
# Distribution packages follow the base image's release (no point pins).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

# Builder systems: the runtime's Python plus the compilers of the op.
FROM system-cpu AS toolchain-cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
ENV ATS_BUILD_CUDA=0

# The CUDA 12 toolkit's nvcc compiles the op's kernel (PyPI's CUDA wheels
# carry ptxas but no nvcc).
FROM nvidia/cuda:${CUDA_TAG}-devel-${CUDA_OS} AS toolchain-gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv g++ \
    && rm -rf /var/lib/apt/lists/*
ENV ATS_BUILD_CUDA=1 \
    ATS_NVCC=/usr/local/cuda/bin/nvcc

# One of the toolchains above, chosen by VARIANT (cpu or gpu).
# hadolint ignore=DL3006
FROM toolchain-${VARIANT} AS builder
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN python3 -m venv "$VIRTUAL_ENV"
WORKDIR /src
# TensorFlow first, in its own layer: source edits do not download it again.
COPY docker/install.sh docker/install.sh
RUN --mount=type=cache,target=/root/.cache/pip bash docker/install.sh --deps
# The three distributions: the library (root pyproject.toml, model_ops/), the
# client (clients/, stubs generated from protos/) and the server (service/).
COPY pyproject.toml setup.py README.md ./
COPY model_ops/ model_ops/
COPY protos/ protos/
COPY clients/ clients/
COPY service/ service/
RUN --mount=type=cache,target=/root/.cache/pip bash docker/install.sh

# One of the runtime systems above, chosen by VARIANT (cpu or gpu).
# hadolint ignore=DL3006
FROM system-${VARIANT} AS runtime
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 ats \
    && useradd --system --uid 10001 --gid ats --no-create-home --shell /usr/sbin/nologin ats
COPY --from=builder /opt/venv /opt/venv
# The shipped models; mount a repository over this path (or point
# ATS_MODEL_REPOSITORY elsewhere) to serve others.
COPY models/ /opt/ats/models/
# A bare ats-serve binds loopback only; in a container, the published ports
# reach it through the container's own interface, so bind them all.
# The plaintext health-only port answers the HEALTHCHECK below and
# Kubernetes' gRPC probes whatever TLS the gRPC port speaks (neither can
# present certificates); it serves grpc.health.v1 and nothing else.
ENV ATS_MODEL_REPOSITORY=/opt/ats/models \
    ATS_DEFAULT_MODEL=megapixel-digits \
    ATS_HOST=0.0.0.0 \
    ATS_PORT=8500 \
    ATS_HTTP_PORT=8501 \
    ATS_METRICS_PORT=8502 \
    ATS_HEALTH_PORT=8503 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/ats
USER 10001:10001
# gRPC (ats.v1, Open Inference Protocol, TF Serving), the Open Inference
# Protocol over HTTP/REST (same TLS and tokens), metrics, health.
EXPOSE 8500 8501 8502 8503
# Shell form on purpose: a port set with -e ATS_HEALTH_PORT=... is the one checked.
# hadolint ignore=DL3025
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ats-client health --server "localhost:${ATS_HEALTH_PORT}" --timeout 4
ENTRYPOINT ["ats-serve"]
