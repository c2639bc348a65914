#!/usr/bin/env bash
# Predict the sample payload against a local server (serve_local.sh or a native `serve`).
#   local_test/predict.sh [FILE] [CONTENT_TYPE] [ACCEPT]   (defaults: payload.csv text/csv)
# The server is PREDICT_URL (default http://127.0.0.1:8080). Works from any directory.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec "$top/predict.sh" "${PREDICT_URL:-http://127.0.0.1:8080}" "${1:-$top/payload.csv}" "${2:-text/csv}" ${3:+"$3"}
