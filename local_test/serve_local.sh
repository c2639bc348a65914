#!/usr/bin/env bash
# Serve DIR/model (default local_test/test_dir) from the image as SageMaker would, on
# http://127.0.0.1:${PORT:-8080}; Ctrl-C or `docker stop` ends it.
#   local_test/serve_local.sh IMAGE [DIR]
# Extra `docker run` options (split on spaces) come from DOCKER_RUN_ARGS, e.g.
# DOCKER_RUN_ARGS="--network host -e SAGEMAKER_BIND_TO_HOST=127.0.0.1".
set -euo pipefail
[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 IMAGE [DIR]" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(cd "${2:-$here/test_dir}" && pwd)
port=${PORT:-8080}
read -r -a extra <<<"${DOCKER_RUN_ARGS:-}"
# The server listens on $port inside too, so this also works with --network host.
exec docker run --rm -p "$port:$port" -e "SAGEMAKER_BIND_TO_PORT=$port" -v "$dir:/opt/ml" \
    ${extra[@]+"${extra[@]}"} "$1" serve
