#!/usr/bin/env bash
# The main job end to end: train on local_test/test_dir, serve the model, predict payload.csv, stop.
# SAGE_KMEANS_ALGORITHM=NAME does the same for another algorithm of kmeans/algorithms/, on its
# sample job local_test/NAME (the image is built with --build-arg ALGORITHM=NAME).
# With a reachable Docker engine it builds and runs the image (train_local.sh, serve_local.sh);
# otherwise it runs kmeans/train and kmeans/serve natively from .venv. It says which.
#   local_test/demo.sh        (DEMO_MODE=docker|native to choose; IMAGE, default sage-kmeans:demo;
#                              DOCKER_BUILD_ARGS / DOCKER_RUN_ARGS add docker options)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
algorithm=${SAGE_KMEANS_ALGORITHM:-kmeans}
test_dir=$here/test_dir
[[ $algorithm == kmeans ]] || test_dir=$here/$algorithm
[[ -d $test_dir/input ]] || { echo "demo: no sample job $test_dir for algorithm $algorithm" >&2; exit 2; }
say() { echo "demo: $*" >&2; }

engine_reachable() {  # `timeout` keeps a hung engine from hanging us; macOS lacks it by default
    command -v docker >/dev/null || return 1
    if command -v timeout >/dev/null; then timeout 20 docker info; else docker info; fi >/dev/null 2>&1
}
mode=${DEMO_MODE:-}
[[ -n $mode ]] || { engine_reachable && mode=docker || mode=native; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 8080)
url=http://127.0.0.1:$port

if [[ $mode == docker ]]; then
    image=${IMAGE:-sage-kmeans:demo}
    say "a Docker engine is reachable: running the image $image"
    "$here/bootstrap.sh" curl
    read -r -a build_args <<<"${DOCKER_BUILD_ARGS:-}"
    docker build --build-arg "ALGORITHM=$algorithm" ${build_args[@]+"${build_args[@]}"} -t "$image" "$top"
    "$here/train_local.sh" "$image" "$test_dir"
    name=sage-kmeans-demo-$$
    DOCKER_RUN_ARGS="--name $name ${DOCKER_RUN_ARGS:-}" PORT=$port "$here/serve_local.sh" "$image" "$test_dir" &
    stop() { docker stop -t 30 "$name" >/dev/null 2>&1 || true; }
else
    say "no Docker engine reachable (or DEMO_MODE=native): running kmeans/train and kmeans/serve natively"
    "$here/bootstrap.sh"
    export PATH=$top/.venv/bin:$PATH SAGEMAKER_BASE_DIR=$test_dir SAGE_KMEANS_ALGORITHM=$algorithm
    "$top/kmeans/train"
    SAGEMAKER_BIND_TO_HOST=127.0.0.1 SAGEMAKER_BIND_TO_PORT=$port "$top/kmeans/serve" &
    stop() { kill -TERM "$server" 2>/dev/null || true; }
fi
server=$!
trap 'stop; wait "$server" 2>/dev/null || true' EXIT

say "waiting for $url/ping"
for _ in $(seq 120); do
    curl -fsS -o /dev/null "$url/ping" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { say "the server exited before answering /ping"; exit 1; }
    sleep 1
done
curl -fsS -o /dev/null "$url/ping" || { say "no answer from $url/ping after 120 s"; exit 1; }

say "predictions for payload.csv (the algorithm's answer columns, comma-separated):"
PREDICT_URL=$url "$here/predict.sh"

say "stopping the server"
trap - EXIT
stop
status=0
wait "$server" || status=$?
[[ $status == 0 ]] || { say "the server exited with status $status"; exit 1; }
say "done: the server stopped cleanly"
