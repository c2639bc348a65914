#!/usr/bin/env bash
# What a new user does on a fresh Debian 12 machine, as root: install git, make, python3 and
# ca-certificates only, clone the repository, and run the README's two commands. .ci/run runs
# it in a container from the debootstrap stand-in for debian:bookworm-slim, cloning HEAD from a
# git bundle. There is no Docker engine in there: `make demo` runs natively and the container
# tests (the image, SDK local mode, the notebook in local mode) skip, saying why; the notebook
# against moto must run (SAGE_KMEANS_REQUIRE_NOTEBOOK=1), as it did not on Python 3.11.2 once.
# MXNet, the second reader of model_algo-1, must install into .venv-mxnet (SAGE_KMEANS_REQUIRE_MXNET=1).
#   .ci/fresh-machine.sh REPOSITORY   (a URL, a path or a git bundle)
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 REPOSITORY" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
step_name='' step_start=$SECONDS
step() {  # step [NAME]: print how long the previous step took, then start the next one
    [[ -z $step_name ]] || printf '== fresh machine: %s: %d s\n' "$step_name" $((SECONDS - step_start))
    step_name=${1:-} step_start=$SECONDS
    [[ -z $step_name ]] || printf '== fresh machine: %s\n' "$step_name"
}

step "apt: git, make, python3, ca-certificates"
apt-get update -qq
apt-get install -y -qq --no-install-recommends git make python3 ca-certificates >/dev/null
python3 --version

step "git clone"
git clone -q -c advice.detachedHead=false "$1" /root/sage-kmeans
cd /root/sage-kmeans
git log --oneline -1

step "make demo"
make demo

step "make test (coverage of kmeans/ measured and reported)"
SAGE_KMEANS_REQUIRE_NOTEBOOK=1 SAGE_KMEANS_REQUIRE_MXNET=1 make test COVERAGE=1

step
