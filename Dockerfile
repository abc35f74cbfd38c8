# syntax=docker/dockerfile:1
# Attention-sampling inference server.
#   docker build -t attention-sampling-serving .                      # CPU
#   docker build --build-arg VARIANT=gpu -t attention-sampling-serving:gpu .
# The builder compiles the patch op against the very TensorFlow that the
# runtime stage then runs (the virtual environment is copied, not rebuilt).
ARG VARIANT=cpu

FROM python:3.11-slim-bookworm AS base-cpu
ENV ATS_BUILD_CUDA=0

FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS base-gpu
# The CUDA libraries themselves come from TensorFlow's CUDA 12 wheels.
# Distribution packages follow the base image's release (no point pins).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV ATS_BUILD_CUDA=1

# One of the two stages above, chosen by VARIANT (cpu or gpu).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

FROM base AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv "$VIRTUAL_ENV"
WORKDIR /src
# TensorFlow first, in its own layer: source edits do not download it again.
COPY docker/install.sh docker/install.sh
RUN --mount=type=cache,target=/root/.cache/pip bash docker/install.sh --deps
COPY pyproject.toml setup.py README.md ./
COPY model_ops/ model_ops/
COPY protos/ protos/
COPY service/ service/
COPY clients/ clients/
RUN --mount=type=cache,target=/root/.cache/pip bash docker/install.sh .

FROM base AS runtime
RUN groupadd --system --gid 10001 ats \
    && useradd --system --uid 10001 --gid ats --no-create-home --shell /usr/sbin/nologin ats
COPY --from=builder /opt/venv /opt/venv
# The shipped models; mount a repository over this path (or point
# ATS_MODEL_REPOSITORY elsewhere) to serve others.
COPY models/ /opt/ats/models/
ENV ATS_MODEL_REPOSITORY=/opt/ats/models \
    ATS_PORT=8500 \
    ATS_METRICS_PORT=8502 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/ats
USER 10001:10001
EXPOSE 8500 8502
# Shell form on purpose: a port set with -e ATS_PORT=... is the one checked.
# hadolint ignore=DL3025
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ats-client health --server "localhost:${ATS_PORT}" --timeout 4
ENTRYPOINT ["ats-serve"]
