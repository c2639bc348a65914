#!/usr/bin/env bash
# CI for the arm64 (Graviton) image, which .ci/run runs beside its other phases on the same
# Docker engine: QEMU emulation, the Dockerfile built for linux/arm64, then tests/test_multiarch.py
# (the arm64 image trains and serves; build_and_push.sh pushes both architectures under one name
# to a local registry). Prints when each step starts; stops what it started, also on failure.
#   .ci/multiarch.sh
# CI cannot reach Docker Hub, whose debian:bookworm-slim lists both architectures. So when the
# engine has a registry mirror on this machine (dockerd --registry-mirror http://127.0.0.1:PORT),
# Debian's docker-registry serves it here with an arm64 stand-in (.ci/standin.sh): every build
# for linux/arm64 then finds its base there, while amd64 builds use the local stand-in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
image_arm64=sage-kmeans:ci-arm64
work=$(mktemp -d /tmp/sage-kmeans-multiarch.XXXXXX)
mirror_pid=

cleanup() {
    if [[ -n $mirror_pid ]]; then
        kill "$mirror_pid" 2>/dev/null || true
        wait "$mirror_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # .ci/run stops it with SIGTERM when another phase fails
step() { printf '== multiarch: %s (at %d s)\n' "$1" "$SECONDS"; }

step "apt: qemu-user-static, docker-registry"
apt-get install -y -qq --no-install-recommends qemu-user-static docker-registry >/dev/null

if [[ $(uname -m) != aarch64 ]]; then
    step "binfmt_misc: arm64 programs run under QEMU"
    binfmt=/proc/sys/fs/binfmt_misc
    [[ -e $binfmt/register ]] || mount -t binfmt_misc binfmt_misc "$binfmt"
    [[ -e $binfmt/qemu-aarch64 ]] || cat /usr/lib/binfmt.d/qemu-aarch64.conf >"$binfmt/register"
fi

mirror=$(docker info --format '{{range .RegistryConfig.Mirrors}}{{println .}}{{end}}' \
    | sed -nE 's#^http://((127\.[0-9.]+|localhost)(:[0-9]+)?)/?$#\1#p' | head -n 1)
if [[ -n $mirror ]]; then
    step "Docker Hub mirror on $mirror with an arm64 debian:bookworm-slim"
    printf '%s\n' 'version: 0.1' 'storage:' '  filesystem:' "    rootdirectory: $work/registry" \
        'http:' "  addr: $mirror" >"$work/registry.yml"
    docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
    mirror_pid=$!
    for _ in $(seq 30); do curl -fs "http://$mirror/v2/" >/dev/null && break; sleep 1; done
    curl -fs "http://$mirror/v2/" >/dev/null || { tail -n 20 "$work/registry.log"; exit 1; }
    .ci/standin.sh arm64 "$mirror/library/debian:bookworm-slim"
    docker push -q "$mirror/library/debian:bookworm-slim" >/dev/null
    docker rmi -f "$mirror/library/debian:bookworm-slim" >/dev/null
elif [[ ${CI:-} == true ]]; then
    echo "multiarch.sh: CI's dockerd needs --registry-mirror http://127.0.0.1:PORT (see above)" >&2
    exit 1
else
    echo "no registry mirror on this machine: the engine must reach Docker Hub"
fi

step "docker build --platform linux/arm64 -t $image_arm64"
# As build_and_push.sh builds it, so that its build in the tests finds every layer cached.
mapfile -t provenance < <(.ci/supply.sh build-args)
docker build --platform linux/arm64 "${provenance[@]/#/--build-arg=}" -t "$image_arm64" . \
    >"$work/build.log" 2>&1 || { tail -n 60 "$work/build.log"; exit 1; }
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' sage-kmeans

step "SBOM of $image_arm64"
.ci/supply.sh sbom "$image_arm64" arm64

step "tests/test_multiarch.py (arm64 image required)"
SAGE_KMEANS_IMAGE_ARM64=$image_arm64 SAGE_KMEANS_REQUIRE_CONTAINER=1 SAGE_KMEANS_REQUIRE_ARM64=1 \
    make test PYTEST_ARGS=tests/test_multiarch.py
step "done"
