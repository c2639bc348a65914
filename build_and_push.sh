#!/usr/bin/env bash
# Build the image and push it to Amazon ECR in your account, creating the repository if needed.
#   ./build_and_push.sh [image-name] [tag]        (defaults: sage-kmeans latest)
# Region: AWS_REGION, else AWS_DEFAULT_REGION, else `aws configure get region`.
# Platform: linux/amd64 by default (what ml.* instances run, also when building on Apple
# silicon); PLATFORM=linux/arm64 for Graviton (ml.*g) instances.
# Prints the image URI to use as training_image / image_uri.
set -euo pipefail

name=${1:-sage-kmeans}
tag=${2:-latest}
platform=${PLATFORM:-linux/amd64}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "build_and_push.sh: $*" >&2; exit 1; }

command -v aws >/dev/null || die "the AWS CLI (aws) is not installed: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine: is Docker running, and may this user use it?"
account=$(aws sts get-caller-identity --query Account --output text) \
    || die "AWS credentials do not work (aws sts get-caller-identity failed): run 'aws configure' or 'aws sso login'"
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region || true)}}
[[ -n $region ]] || die "no AWS region: set AWS_REGION or run 'aws configure set region REGION'"

registry="$account.dkr.ecr.$region.amazonaws.com"
[[ $region == cn-* ]] && registry+=".cn"
uri="$registry/$name:$tag"

if ! aws ecr describe-repositories --region "$region" --repository-names "$name" >/dev/null 2>&1; then
    echo "Creating ECR repository $name in $region"
    aws ecr create-repository --region "$region" --repository-name "$name" >/dev/null
fi
aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"

echo "Building $uri for $platform"
docker build --platform "$platform" -t "$name:$tag" "$here"
docker tag "$name:$tag" "$uri"
docker tag "$name:$tag" "$registry/$name:latest"
docker push "$uri"
[[ $tag == latest ]] || docker push "$registry/$name:latest"
echo "$uri"
