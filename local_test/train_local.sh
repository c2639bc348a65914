#!/usr/bin/env bash
# Train in the image as SageMaker would: DIR (default local_test/test_dir) is mounted as /opt/ml.
#   local_test/train_local.sh IMAGE [DIR]
# The model lands in DIR/model, artefacts in DIR/output. Extra `docker run` options
# (split on spaces) come from DOCKER_RUN_ARGS, e.g. DOCKER_RUN_ARGS="--network host".
set -euo pipefail
[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 IMAGE [DIR]" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(cd "${2:-$here/test_dir}" && pwd)
read -r -a extra <<<"${DOCKER_RUN_ARGS:-}"
exec docker run --rm -v "$dir:/opt/ml" ${extra[@]+"${extra[@]}"} "$1" train
