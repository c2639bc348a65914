#!/usr/bin/env bash
# The locks: each hand-written requirements/NAME.in compiled by uv into a lock with PyPI's
# sha256 of every file of every pinned version, the file that the image, .venv, .venv-notebook
# and CI install with --require-hashes:
#   requirements/runtime.in   -> requirements.txt           (the image, native runs, tests)
#   requirements/dev.in       -> requirements-dev.txt       (.venv: the runtime lock + tools)
#   requirements/notebook.in  -> requirements-notebook.txt  (.venv-notebook)
#   requirements/supply.in    -> requirements-supply.txt    (CI's lock, audit and SBOM tools)
#   requirements/mxnet.in     -> requirements-mxnet.txt     (.venv-mxnet: a test oracle)
# Usage: .ci/lock.sh            rewrite the locks (pins already in a lock are kept while
#                               they satisfy its .in file: only what changed moves)
#        .ci/lock.sh --check    fail, with the diff, when a lock is stale against its .in
#                               file, or differs between amd64 and arm64
#        .ci/lock.sh --upgrade  re-resolve everything to the newest versions the .in allows
# UV names the uv to run (default: uv on PATH). Resolves for the image's Python (Debian 12's
# 3.11.2, glibc 2.36) on x86_64, and checks that aarch64 resolves the same.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
uv=${UV:-uv}
mode=${1:-write}
case $mode in write | --check | --upgrade) ;; *) echo "usage: $0 [--check|--upgrade]" >&2; exit 2 ;; esac
command -v "$uv" >/dev/null || { echo "lock.sh: uv not found: pip install --require-hashes -r requirements-supply.txt, or set UV" >&2; exit 1; }
locks=(runtime:requirements.txt dev:requirements-dev.txt notebook:requirements-notebook.txt
    supply:requirements-supply.txt mxnet:requirements-mxnet.txt)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# PyPI only, whatever this machine's pip or uv configuration adds; the system's CA bundle.
export UV_NATIVE_TLS=1
compile() {  # compile IN OUT ARCH [FLAGS...]
    local input=$1 output=$2 arch=$3
    shift 3
    "$uv" pip compile --quiet --no-config --index-url https://pypi.org/simple \
        --generate-hashes --python-version 3.11.2 --python-platform "$arch-manylinux_2_36" \
        --custom-compile-command ".ci/lock.sh" "$@" -o "$output" "$input"
}
without_hashes() { grep -v -- '--hash=sha256:' "$1" | sed 's/ \\$//'; }
hashes() { grep -o 'sha256:[0-9a-f]*' "$1" | sort -u; }
stale=0
for each in "${locks[@]}"; do
    name=${each%%:*} lock=${each#*:}
    if [[ $mode == --check ]]; then
        was_stale=$stale stale=0
        for arch in x86_64 aarch64; do
            # Seeded with the lock's pins (kept while they satisfy the .in) but not its hashes,
            # which uv would carry over: they are fetched from PyPI afresh.
            without_hashes "$lock" >"$work/$name-$arch.txt" 2>/dev/null || : >"$work/$name-$arch.txt"
            compile "requirements/$name.in" "$work/$name-$arch.txt" "$arch"
            # Stale: any pin or comment differs, or a hash in the lock is no longer PyPI's.
            # A file PyPI added to a pinned version since (a wheel for a new Python) is only
            # reported: the lock still installs.
            if ! diff -u <(without_hashes "$lock") <(without_hashes "$work/$name-$arch.txt") >"$work/diff"; then
                echo "lock.sh: $lock is stale against requirements/$name.in for $arch (run .ci/lock.sh):"
                head -n 40 "$work/diff"
                stale=1
            fi
            gone=$(comm -23 <(hashes "$lock") <(hashes "$work/$name-$arch.txt") | wc -l)
            added=$(comm -13 <(hashes "$lock") <(hashes "$work/$name-$arch.txt") | wc -l)
            if [[ $gone != 0 ]]; then
                echo "lock.sh: $lock: $gone of its hashes are not among PyPI's files for $arch (run .ci/lock.sh)"
                stale=1
            fi
            if [[ $added != 0 && $arch == x86_64 ]]; then
                echo "lock.sh: $lock: PyPI lists $added files more for its pins; .ci/lock.sh would add their hashes"
            fi
        done
        packages=$(grep -cE '^[a-z0-9]' "$lock")
        hashes=$(grep -c -- '--hash=sha256:' "$lock")
        [[ $stale == 1 ]] || echo "lock.sh: $lock: $packages packages, $hashes file hashes, fresh for x86_64 and aarch64"
        [[ $was_stale == 0 ]] || stale=1
    else
        flags=()
        [[ $mode == --upgrade ]] && flags=(--upgrade)
        # Its pins as the starting point, not its hashes (uv would keep them unchecked).
        if [[ -f $lock ]]; then without_hashes "$lock" >"$work/seed.txt" && cp "$work/seed.txt" "$lock"; fi
        compile "requirements/$name.in" "$lock" x86_64 ${flags[@]+"${flags[@]}"}
        echo "lock.sh: wrote $lock ($(grep -cE '^[a-z0-9]' "$lock") packages)"
    fi
done
if [[ $stale == 1 ]]; then exit 1; fi
