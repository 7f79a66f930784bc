#!/usr/bin/env bash
# Build the image, tag it with the version and the git commit, push it, print its digest.
#
#   scripts/registry-push.sh REGISTRY/REPOSITORY [docker build options...]
#   scripts/registry-push.sh registry.example.com/team/genai-service
#   scripts/registry-push.sh 127.0.0.1:5000/genai-service --build-arg PYTHON_IMAGE=...
#
# - Tags: REPOSITORY:<version> (pyproject.toml), REPOSITORY:sha-<12-hex commit> and
#   REPOSITORY:cache, the moving tag the next build takes its cache from.
# - A version tag names one image forever: the script stops if the registry has it already
#   (bump the version), and if the work tree has uncommitted changes (the sha tag would lie);
#   ALLOW_DIRTY=1 skips the latter, for tests and experiments.
# - The cache: the image is built with BuildKit's inline cache (BUILDKIT_INLINE_CACHE=1: the
#   cache metadata travels inside the pushed image) and `--cache-from REPOSITORY:cache`, so a
#   machine with an empty build cache (a new CI runner, a colleague's laptop) downloads the
#   unchanged layers from the registry instead of rebuilding them.
# - Output: the last line on stdout is REPOSITORY@sha256:...: deploy and pull by that digest.
#
# Log in first (`docker login REGISTRY`). Extra options go to `docker build` as they are
# (--target, --build-arg, --secret, --network ...). Needs BuildKit (DOCKER_BUILDKIT=1 on 20.10).
# DOCKER: the docker CLI to run (default: docker on PATH).
set -euo pipefail
docker="${DOCKER:-docker}"  # the docker CLI to use

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    sed -n '2,21p' "$0" >&2
    exit 2
fi
repository="$1"
shift
cd "$(dirname "$0")/.."

version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
revision="$(git rev-parse HEAD)"
sha="$(git rev-parse --short=12 HEAD)"
if [ -n "$(git status --porcelain)" ] && [ "${ALLOW_DIRTY:-0}" != "1" ]; then
    echo "uncommitted changes: commit first (or ALLOW_DIRTY=1)" >&2
    exit 1
fi
# Is the version tag in the registry already? "no such manifest" is the only answer that lets
# the push go on; any other failure (no login, registry down) stops it. `docker manifest`
# talks plain HTTP only when told: a loopback registry (as in the tests) gets --insecure.
insecure=()
case "$repository" in
    localhost[:/]* | 127.*) insecure=(--insecure) ;;
esac
if existing="$(DOCKER_CLI_EXPERIMENTAL=enabled "$docker" manifest inspect "${insecure[@]}" \
    "$repository:$version" 2>&1)"; then
    echo "$repository:$version is already pushed: bump the version in pyproject.toml" >&2
    exit 1
elif [[ "$existing" != *"no such manifest"* ]]; then
    echo "cannot check $repository:$version in the registry: $existing" >&2
    exit 1
fi

# BuildKit reads the cache metadata of REPOSITORY:cache from the registry and downloads only
# the layers it reuses; with no such image yet (the first push) it builds without it.
export DOCKER_BUILDKIT=1
"$docker" build \
    --build-arg BUILDKIT_INLINE_CACHE=1 \
    --cache-from "$repository:cache" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$revision" \
    -t "$repository:$version" -t "$repository:sha-$sha" -t "$repository:cache" \
    "$@" . >&2

for tag in "$version" "sha-$sha" cache; do
    "$docker" push --quiet "$repository:$tag" >&2
done
"$docker" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$repository:$version" \
    | grep -F "$repository@sha256:" | head -n1
