#!/usr/bin/env bash
# Build the image and push it to Amazon ECR in your account, creating the repository if needed.
#   ./build_and_push.sh [image-name] [tag]        (defaults: sage-kmeans latest)
# Region: AWS_REGION, else AWS_DEFAULT_REGION, else `aws configure get region`.
# PLATFORM: linux/amd64 by default (what ml.* instances run, also when building on Apple
# silicon); linux/arm64 for Graviton (ml.*g) instances; linux/amd64,linux/arm64 for one name
# that serves both: with `docker buildx` when present, else one image per architecture
# (tag-amd64, tag-arm64) joined by `docker manifest`. A foreign architecture builds under
# emulation (Docker Desktop has it; Linux: apt-get install qemu-user-static).
# REGISTRY: push there instead of the account's ECR registry (the tests' local registry;
# the AWS steps still run).
# Provenance: the image's OCI labels org.opencontainers.image.revision, version and created
# come from git (the commit, `git describe`, the commit's time); train records them in model.json.
# SBOM: a CycloneDX JSON bill of materials of each architecture pushed (.ci/sbom.py: the Python
# and Debian packages, each wheel's sha256) into SBOM_DIR (default: sbom/ here), when python3 is
# installed; `docker buildx` pushes without a local image, so it writes none.
# Prints the image URI to use as training_image / image_uri.
set -euo pipefail

name=${1:-sage-kmeans}
tag=${2:-latest}
platform=${PLATFORM:-linux/amd64}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "build_and_push.sh: $*" >&2; exit 1; }
sbom_dir=${SBOM_DIR:-$here/sbom}
provenance=()
if git -C "$here" rev-parse --git-dir >/dev/null 2>&1; then
    provenance=(--build-arg "SAGE_KMEANS_REVISION=$(git -C "$here" rev-parse HEAD)"
        --build-arg "SAGE_KMEANS_VERSION=$(git -C "$here" describe --tags --always --dirty)"
        --build-arg "SAGE_KMEANS_CREATED=$(git -C "$here" log -1 --format=%cI)")
fi

case $platform in
    linux/amd64 | linux/arm64 | linux/amd64,linux/arm64 | linux/arm64,linux/amd64) ;;
    *) die "PLATFORM must be linux/amd64, linux/arm64 or linux/amd64,linux/arm64, got '$platform'" ;;
esac
IFS=, read -r -a platforms <<<"$platform"
command -v aws >/dev/null || die "the AWS CLI (aws) is not installed: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine: is Docker running, and may this user use it?"
account=$(aws sts get-caller-identity --query Account --output text) \
    || die "AWS credentials do not work (aws sts get-caller-identity failed): run 'aws configure' or 'aws sso login'"
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region || true)}}
[[ -n $region ]] || die "no AWS region: set AWS_REGION or run 'aws configure set region REGION'"

registry="$account.dkr.ecr.$region.amazonaws.com"
[[ $region == cn-* ]] && registry+=".cn"
registry=${REGISTRY:-$registry}
uri="$registry/$name:$tag"
names=("$uri")
[[ $tag == latest ]] || names+=("$registry/$name:latest")

if ! aws ecr describe-repositories --region "$region" --repository-names "$name" >/dev/null 2>&1; then
    echo "Creating ECR repository $name in $region"
    aws ecr create-repository --region "$region" --repository-name "$name" >/dev/null
fi
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"

build() {  # build PLATFORM TAG: one architecture into a local image
    echo "Building $2 for $1"
    docker build --platform "$1" ${provenance[@]+"${provenance[@]}"} -t "$2" "$here" && return
    [[ $1 == "linux/$(docker version --format '{{.Server.Arch}}' 2>/dev/null)" ]] \
        || echo "build_and_push.sh: building for $1 here needs emulation (Linux: apt-get install qemu-user-static)" >&2
    die "docker build for $1 failed"
}

sbom() {  # sbom PLATFORM IMAGE: its bill of materials beside what is pushed
    local out container
    if ! command -v python3 >/dev/null; then
        echo "build_and_push.sh: python3 not found: no SBOM for $1" >&2
        return
    fi
    mkdir -p "$sbom_dir"
    out=$sbom_dir/$name-$tag-${1#linux/}.cdx.json
    container=$(docker create "$2")
    docker export "$container" | python3 "$here/.ci/sbom.py" --arch "${1#linux/}" \
        --revision "$(docker image inspect --format '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$2")" \
        --name "$registry/$name" >"$out" || { docker rm "$container" >/dev/null; die "SBOM of $2 failed"; }
    docker rm "$container" >/dev/null
    echo "SBOM for $1: $out"
}

if [[ ${#platforms[@]} == 1 ]]; then
    build "$platform" "$name:$tag"
    for each in "${names[@]}"; do docker tag "$name:$tag" "$each"; done
    for each in "${names[@]}"; do docker push "$each"; done
    sbom "$platform" "$name:$tag"
elif docker buildx version >/dev/null 2>&1; then
    echo "Building $uri for $platform with docker buildx"
    tags=()
    for each in "${names[@]}"; do tags+=(--tag "$each"); done
    docker buildx build --platform "$platform" ${provenance[@]+"${provenance[@]}"} "${tags[@]}" --push "$here" \
        || die "docker buildx build failed (a builder for several platforms: docker buildx create --use)"
else
    # One image per architecture (TAG-amd64, TAG-arm64), then a manifest list naming them.
    # The manifest commands reach a registry on this machine (plain HTTP) only with --insecure.
    insecure=()
    [[ $registry == localhost:* || $registry == 127.* ]] && insecure=(--insecure)
    parts=()
    for each in "${platforms[@]}"; do
        parts+=("$uri-${each#linux/}")
        build "$each" "${parts[-1]}"
        docker push "${parts[-1]}"
        sbom "$each" "${parts[-1]}"
    done
    for each in "${names[@]}"; do
        docker manifest rm "$each" >/dev/null 2>&1 || true  # a list left by an interrupted run
        docker manifest create ${insecure[@]+"${insecure[@]}"} "$each" "${parts[@]}"
        docker manifest push ${insecure[@]+"${insecure[@]}"} --purge "$each"
    done
fi
echo "Pushed for ${platform//,/ and }:"
echo "$uri"
