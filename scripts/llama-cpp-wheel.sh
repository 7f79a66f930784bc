#!/usr/bin/env bash
# Builds llama-cpp-python once per (version, CPU architecture, Python, build flags) and prints
# the wheel's path. Used by `make install`, the Dockerfiles and bench/, so every llama.cpp the
# project runs is compiled the same way.
#
# Why not plain `pip install llama-cpp-python`: pip compiles llama.cpp with GGML_NATIVE=ON
# (-march=native), so the build is tied to the build host's CPU. On a host that advertises AMX
# but faults on it (some hypervisors) the first real prompt segfaults; copied to an older CPU it
# dies with SIGILL. pip's wheel cache also hands that native wheel to any later install, whatever
# CMAKE_ARGS says. Here the flags are part of the cache key, and pip's own cache is bypassed.
#
#   scripts/llama-cpp-wheel.sh [WHEEL_ROOT]     (default ~/.cache/genai-service/wheels)
#   scripts/llama-cpp-wheel.sh --flags          only print the CMake flags (bench/ builds
#                                               llama-server with them)
#
# CMAKE_ARGS, when set, replaces the portable flags (e.g. CMAKE_ARGS=-DGGML_NATIVE=ON for a
# build tuned to this very machine, or -DGGML_CUDA=ON ...). PYTHON picks the interpreter.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

# The version pinned in pyproject.toml (one place).
version="$("$python" - "$here/pyproject.toml" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(next(d.split("==")[1] for d in deps if d.startswith("llama-cpp-python==")))
PY
)"

if [ -z "${CMAKE_ARGS:-}" ]; then
    case "$(uname -m)" in
        x86_64 | amd64)
            # x86-64-v3 (Haswell, 2013+; every x86 cloud VM): AVX2/FMA/F16C/BMI2, no AVX-512
            # and no AMX, which are not on every host (and AMX faults under some hypervisors).
            # Measured: as fast as a native build for decode on an AVX-512 host.
            CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
            ;;
        *) CMAKE_ARGS="-DGGML_NATIVE=OFF" ;;
    esac
fi
export CMAKE_ARGS
if [ "${1:-}" = "--flags" ]; then
    echo "$CMAKE_ARGS"
    exit 0
fi

tag="$("$python" -c 'import sys; print(sys.implementation.cache_tag)')"
key="$(printf '%s\n' "$version" "$(uname -m)" "$tag" "$CMAKE_ARGS" | sha256sum | cut -c1-16)"
root="${1:-${GENAI_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/genai-service/wheels}}"
out="$root/llama-cpp-python-$version-$key"

wheel="$(ls "$out"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)"
if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $version (about 6 minutes) with CMAKE_ARGS=$CMAKE_ARGS" >&2
    tmp="$out.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # --no-cache-dir: never take (or leave) a wheel in pip's cache, which ignores CMAKE_ARGS.
    "$python" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
        --wheel-dir "$tmp" "llama-cpp-python==$version" >&2
    printf '%s\n' "$CMAKE_ARGS" > "$tmp/CMAKE_ARGS"
    rm -rf "$out"
    mv "$tmp" "$out"
    wheel="$(ls "$out"/llama_cpp_python-*.whl | head -n 1)"
fi
echo "$wheel"
