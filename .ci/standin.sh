#!/usr/bin/env bash
# A stand-in for Docker Hub's debian:bookworm-slim, for CI machines that reach only Debian's
# packages: debootstrap's minbase bookworm for one architecture, slimmed as the real image is,
# using this machine's apt sources, proxy settings and CA certificates (so apt and pip in the
# Dockerfile work through the same proxy), loaded into the Docker engine as TAG.
#   .ci/standin.sh ARCH TAG       (ARCH: amd64 or arm64; a foreign one needs binfmt and QEMU)
# Built with BuildKit from scratch, so the image records ARCH (`docker import` records the host's).
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 ARCH TAG" >&2; exit 2; }
arch=$1 tag=$2
sources=/etc/apt/sources.list.d/debian.sources
mirror=$(awk '$1 == "URIs:" { print $2; exit }' "$sources" 2>/dev/null || true)
[[ -n $mirror ]] || { echo "standin.sh: no Debian mirror (URIs:) in $sources" >&2; exit 1; }
work=$(mktemp -d /tmp/sage-kmeans-standin.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

debootstrap --arch="$arch" --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log"; exit 1; }
rm -f "$root/etc/apt/sources.list"
cp "$sources" "$root/etc/apt/sources.list.d/"
grep -lE 'Acquire::.*(Proxy|Check-Valid-Until|Check-Date)' /etc/apt/apt.conf.d/* 2>/dev/null \
    | xargs -r cp -t "$root/etc/apt/apt.conf.d/"
# update-ca-certificates adds these to the bundle when the Dockerfile installs ca-certificates.
if [[ -d /usr/local/share/ca-certificates ]]; then
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
# As the real slim image: no apt caches or docs kept in layers.
printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' >"$root/etc/apt/apt.conf.d/docker-clean"
printf 'path-exclude /usr/share/%s/*\n' doc man info locale >"$root/etc/dpkg/dpkg.cfg.d/slim"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/{doc,man,info,locale}/*

mkdir "$work/context"
tar -C "$root" -c . >"$work/context/rootfs.tar"
rm -rf "$root"
printf '%s\n' 'FROM scratch' 'ADD rootfs.tar /' 'CMD ["bash"]' >"$work/context/Dockerfile"
DOCKER_BUILDKIT=1 docker build -q --platform "linux/$arch" -t "$tag" "$work/context" >/dev/null
