#!/usr/bin/env bash
# Send a file to a running sage-kmeans server and print the answer.
#   ./predict.sh URL FILE CONTENT_TYPE [ACCEPT]
#   ./predict.sh http://127.0.0.1:8080 payload.csv text/csv
# POSTs FILE to URL/invocations and prints the answer (ending it with a newline if it lacks one);
# exits non-zero, printing the status, on a non-2xx answer.
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
    echo "usage: $0 URL FILE CONTENT_TYPE [ACCEPT]" >&2
    exit 2
fi
url=${1%/}/invocations
file=$2
headers=(-H "Content-Type: $3")
[[ -n ${4:-} ]] && headers+=(-H "Accept: $4")
[[ -r $file ]] || { echo "predict.sh: cannot read $file" >&2; exit 2; }
command -v curl >/dev/null || { echo "predict.sh: curl is not installed" >&2; exit 2; }

body=$(mktemp)
trap 'rm -f "$body"' EXIT
status=$(curl -sS -o "$body" -w '%{http_code}' -X POST "${headers[@]}" --data-binary "@$file" "$url")
cat "$body"
[[ ! -s $body || -z $(tail -c 1 "$body") ]] || echo  # end with a newline, for the terminal
if [[ $status != 2?? ]]; then
    echo "predict.sh: HTTP $status from $url" >&2
    exit 1
fi
