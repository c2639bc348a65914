#!/usr/bin/env bash
# The supply-chain steps of CI (.ci/run, .ci/multiarch.sh), each saying what it found:
#   .ci/supply.sh tools               a venv with requirements-supply.txt, installed with
#                                     --require-hashes, in $SUPPLY_VENV (uv, pip-audit, CycloneDX)
#   .ci/supply.sh lock                every lock fresh against requirements/*.in (.ci/lock.sh --check)
#   .ci/supply.sh build-args          the provenance build arguments from git, one a line
#   .ci/supply.sh sbom IMAGE ARCH     IMAGE's CycloneDX SBOM into $SBOM_DIR/sbom-ARCH.cdx.json
#   .ci/supply.sh audit IMAGE         the runtime lock and IMAGE's Debian packages (.ci/audit.py)
#   .ci/supply.sh reproduce IMAGE [DOCKER-BUILD-ARGS...]
#                                     the venv stage rebuilt with --no-cache, its files and
#                                     sha256s compared with IMAGE's /opt/venv; fails if any differ
# SUPPLY_VENV defaults to .venv-supply, SBOM_DIR to the current folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=${SUPPLY_VENV:-$PWD/.venv-supply}
say() { echo "supply: $*"; }
usage() { sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }

tools() {
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
        -r requirements-supply.txt
    say "tools in $venv: $("$venv/bin/uv" --version), pip-audit $("$venv/bin/pip-audit" --version | cut -d' ' -f2)"
}

need_tools() {
    [[ -x $venv/bin/uv ]] || tools
}

exported() {  # exported IMAGE: the image's filesystem as a tar stream on stdout
    local container status=0
    container=$(docker create "$1")
    docker export "$container" || status=$?
    docker rm "$container" >/dev/null
    return "$status"
}

case ${1:-} in
    tools) tools ;;
    lock)
        need_tools
        UV=$venv/bin/uv .ci/lock.sh --check
        ;;
    build-args)
        # created: the commit's time, not the build's, so that two builds of it agree
        echo "SAGE_KMEANS_REVISION=$(git rev-parse HEAD)"
        echo "SAGE_KMEANS_VERSION=$(git describe --tags --always --dirty)"
        echo "SAGE_KMEANS_CREATED=$(git log -1 --format=%cI)"
        ;;
    sbom)
        [[ $# == 3 ]] || usage
        need_tools
        out=${SBOM_DIR:-$PWD}/sbom-$3.cdx.json
        revision=$(docker image inspect --format '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$2")
        exported "$2" | "$venv/bin/python" .ci/sbom.py --arch "$3" --revision "$revision" >"$out"
        say "SBOM of $2 ($3, revision ${revision:-unknown}) in $out, CycloneDX 1.6, schema-valid"
        ;;
    audit)
        [[ $# == 2 ]] || usage
        need_tools
        # PyPI only, as in the image: not this machine's pip configuration
        PIP_CONFIG_FILE=/dev/null "$venv/bin/python" .ci/audit.py --image "$2" requirements.txt
        ;;
    reproduce)
        [[ $# -ge 2 ]] || usage
        image=$2
        shift 2
        work=$(mktemp -d)
        trap 'rm -rf "$work"; docker rmi -f "$image-rebuilt" >/dev/null 2>&1 || true' EXIT
        say "rebuilding the venv stage of $image with --no-cache"
        docker build --no-cache --target build "$@" -t "$image-rebuilt" . >"$work/build.log" 2>&1 \
            || { tail -n 40 "$work/build.log"; exit 1; }
        exported "$image" | python3 .ci/venv-listing.py >"$work/first.txt"
        exported "$image-rebuilt" | python3 .ci/venv-listing.py >"$work/second.txt"
        if diff "$work/first.txt" "$work/second.txt" >"$work/diff"; then
            say "two builds of $(git rev-parse --short HEAD): the same $(wc -l <"$work/first.txt") files in /opt/venv, byte for byte"
        else
            say "two builds of one commit differ in $(grep -c '^<' "$work/diff") of $(wc -l <"$work/first.txt") files of /opt/venv; by suffix:"
            grep '^<' "$work/diff" | sed -E 's/.*\.([A-Za-z0-9]+)$/\1/; t; s/.*/(none)/' | sort | uniq -c
            head -n 20 "$work/diff"
            exit 1
        fi
        ;;
    *) usage ;;
esac
