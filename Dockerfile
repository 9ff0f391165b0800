# Fragua worker image: the flows, tasks and library with their dependencies.
#
#   docker build -t fragua:cpu .                                  # CPU (torch CPU wheel)
#   docker build -t fragua:cuda --build-arg VARIANT=cuda .        # NVIDIA GPUs (CUDA 12.8 torch wheel)
#
# VARIANT picks the base image and the torch wheel index; everything else is the same.
# The target `serve` is the OpenAI-compatible server (`fragua serve`) on the same image:
#
#   docker build --target serve -t fragua:serve .                 # local engine, CPU
#   docker build --target serve -t fragua:serve-cuda --build-arg VARIANT=cuda --build-arg EXTRAS=vllm .
#                                                                 # serve.engine = "vllm" on NVIDIA GPUs
ARG VARIANT=cpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base-cpu
ENV TORCH_INDEX=https://download.pytorch.org/whl/cpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-cuda
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX=https://download.pytorch.org/whl/cu128

# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG EXTRAS=dask,ray,quant
# TOKENIZERS_PARALLELISM is a switch, not a secret (hadolint flags any name with TOKEN in it).
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# torch first, from the variant's index, so that the project's open torch range keeps it.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv && pip install --index-url "${TORCH_INDEX}" "torch>=2.4"

WORKDIR /opt/fragua
COPY pyproject.toml README.md ./
COPY src ./src
COPY flows ./flows
COPY tasks ./tasks
COPY blocks ./blocks
COPY deployments ./deployments
# The project itself, from the copied tree (its dependency ranges live in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install ".[${EXTRAS}]"

RUN useradd --create-home --uid 1000 fragua && mkdir -p /data && chown fragua /data /opt/fragua
USER 1000
ENV FRAGUA_WORK_DIR=/data HOME=/home/fragua
VOLUME ["/data"]

# A Kubernetes / Docker work pool overrides the command with the flow run's; by hand, the CLI.
ENTRYPOINT []
CMD ["fragua", "--help"]

# The OpenAI-compatible server. Its settings come from the environment (FRAGUA_SERVE__*, the
# registry's FRAGUA_REGISTRY__*); /health answers while the process lives, /ready once a version is loaded.
FROM runtime AS serve
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('FRAGUA_SERVE__PORT', '8000'), timeout=4)"]
CMD ["fragua", "serve", "--host", "0.0.0.0"]

# The last stage is what a plain `docker build .` makes: the worker image above.
FROM runtime AS worker
