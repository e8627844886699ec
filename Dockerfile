# syntax=docker/dockerfile:1.7
# One file, two images of `cxr serve` on the bundled model repository (models/). Research use only.
#
#   docker build -t cxr-covid:cpu .                            slim CPU image (plain onnxruntime)
#   docker build --build-arg FLAVOR=gpu -t cxr-covid:gpu .     CUDA + cuDNN image (onnxruntime-gpu)
#   docker build --build-arg EXTRAS=load -t cxr-covid:load .   adds the project's optional extras
#
# The GPU image needs the NVIDIA Container Toolkit on the host (`docker run --gpus all`, or the compose
# `gpu` profile). onnxruntime-gpu falls back to the CPU without a word when CUDA is missing: GET /readyz
# lists the providers really in use, so check it says CUDAExecutionProvider.

ARG FLAVOR=cpu
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# The CUDA major must be the one onnxruntime-gpu was built for (its `cuda` extra names it: the 1.2x-1.3x
# wheels on PyPI want CUDA 13 and cuDNN 9). Change both together.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-gpu
# Ubuntu 24.04's python3 is 3.12 (the project needs 3.11+); no pip here: the venv brings its own.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# --- build: a virtual environment with the project, built on the same base it will run on (a venv's
# interpreter links are only valid there).
FROM base-${FLAVOR} AS build
ARG FLAVOR
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cxr cxr
COPY models models
COPY service service
COPY export export
COPY pacs pacs
COPY loadtest loadtest
RUN /opt/venv/bin/pip install ".${EXTRAS:+[$EXTRAS]}"
# The project depends on onnxruntime-gpu on x86_64 Linux (it also runs on CPU-only hosts), but its wheel
# is ~20x the size of plain onnxruntime. The CPU image swaps it for onnxruntime of the same version; the
# two must never be installed together (they overwrite each other's files).
RUN if [ "$FLAVOR" = cpu ] && /opt/venv/bin/pip show -q onnxruntime-gpu 2>/dev/null; then \
        version="$(/opt/venv/bin/python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')" \
        && /opt/venv/bin/pip uninstall -y onnxruntime-gpu \
        && /opt/venv/bin/pip install "onnxruntime==${version}"; \
    fi \
    && /opt/venv/bin/python -c "import onnxruntime; print('providers:', onnxruntime.get_available_providers())"
# An image that cannot serve or classify is not built: the installed command, from outside the source tree,
# loads the service (`serve --help` imports the app) and classifies a generated image on the model
# repository the wheel carries.
RUN cd / && /opt/venv/bin/cxr --help > /dev/null && /opt/venv/bin/cxr serve --help > /dev/null \
    && /opt/venv/bin/python -c "import cv2, numpy as np; cv2.imwrite('/tmp/probe.png', np.tile(np.arange(256, dtype=np.uint8), (256, 1)))" \
    && /opt/venv/bin/cxr predict --format jsonl /tmp/probe.png \
    && rm /tmp/probe.png

# --- runtime: the venv, the model repository, a non-root user.
FROM base-${FLAVOR} AS runtime
ARG FLAVOR
LABEL org.opencontainers.image.title="cxr-covid" \
      org.opencontainers.image.description="COVID-19 chest X-ray classification service. RESEARCH USE ONLY: not for diagnosis." \
      org.opencontainers.image.licenses="Apache-2.0" \
      cxr-covid.flavor="${FLAVOR}"
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN groupadd --system --gid 10001 cxr \
    && useradd --system --uid 10001 --gid cxr --home-dir /app --no-create-home --shell /usr/sbin/nologin cxr \
    && mkdir -p /var/lib/cxr && chown cxr:cxr /var/lib/cxr
COPY --from=build /opt/venv /opt/venv
# The bundled model repository is inside the venv (the wheel's `cxr_models`), owned by root and read-only to
# the service: a compromised process cannot swap a model (the service also checks every file's sha256
# against its card before loading it). Mount another repository and set CXR_MODEL_DIR to serve it.
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CXR_HOST=0.0.0.0 \
    CXR_PORT=8000 \
    XDG_STATE_HOME=/var/lib/cxr
USER 10001:10001
EXPOSE 8000
# Liveness only (/healthz answers while the models warm up); readiness is /readyz, for load balancers.
# No curl in the slim image: the venv's Python does the request.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CXR_PORT', '8000'), timeout=2)"]
# uvicorn drains on SIGTERM (service/server.py): give `docker stop -t` / stop_grace_period at least
# CXR_DRAIN_TIMEOUT_S + 2 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cxr"]
CMD ["serve"]
