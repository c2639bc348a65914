#!/usr/bin/env bash
# Set up what `make demo` and `make test` need on this machine, doing only what is missing:
#   venv   .venv with requirements-dev.txt, the lock with every file's sha256 (reinstalled when
#          a lock changes; pip refuses a file whose hash the lock does not list)
#   nginx  the web server in front of `serve` (installed with apt-get when running as root)
#   curl   what predict.sh sends requests with (likewise)
#   wrk    the load generator of the benchmarks (likewise)
#   mxnet  the C libraries that MXNet, the tests' second reader of model_algo-1, loads beside
#          its wheel: Debian's libgomp1 and libquadmath0 (likewise)
# Usage: local_test/bootstrap.sh [venv] [nginx] [curl] [wrk] [mxnet]   (no argument: all five)
# PYTHON names the interpreter for a new .venv (default python3; 3.11.2 or newer, the oldest
# tested: Debian 12's).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
say() { echo "bootstrap: $*" >&2; }

apt_install() {  # apt_install PACKAGE...: install, or say how to when we cannot
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing $* with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
        say "missing: $*. Install it (Debian/Ubuntu: sudo apt-get install $*; macOS: brew install $*), or rerun as root."
        exit 1
    fi
}

setup_venv() {
    local venv=$top/.venv want
    want=$(cat "$top/requirements.txt" "$top/requirements-dev.txt" | cksum)
    if [[ -x $venv/bin/python && $(cat "$venv/.requirements" 2>/dev/null) == "$want" ]]; then
        return
    fi
    if [[ ! -x $venv/bin/python ]]; then
        command -v "$python" >/dev/null || { say "$python not found: install Python 3.11.2 or newer, or set PYTHON"; exit 1; }
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11, 2))' \
            || { say "$python is older than 3.11.2: set PYTHON to a newer one"; exit 1; }
        "$python" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
        say "creating .venv with $python"
        "$python" -m venv "$venv"
    fi
    say "installing requirements-dev.txt into .venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
        -r "$top/requirements-dev.txt"
    echo "$want" >"$venv/.requirements"
}

[[ $# -gt 0 ]] || set -- venv nginx curl wrk mxnet
missing=()
for part in "$@"; do
    case $part in
        venv) ;;
        nginx) command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx) ;;
        curl) command -v curl >/dev/null || missing+=(curl) ;;
        wrk) command -v wrk >/dev/null || missing+=(wrk) ;;
        mxnet)
            for lib in libgomp.so.1:libgomp1 libquadmath.so.0:libquadmath0; do
                /sbin/ldconfig -p 2>/dev/null | grep -qF " ${lib%%:*} " || missing+=("${lib#*:}")
            done
            ;;
        *) say "unknown part '$part' (expected venv, nginx, curl, wrk, mxnet)"; exit 2 ;;
    esac
done
[[ ${#missing[@]} -eq 0 ]] || apt_install "${missing[@]}"
if [[ " $* " == *" venv "* ]]; then setup_venv; fi
