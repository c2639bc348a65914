#!/usr/bin/env bash
# A stand-in for Docker Hub's debian:bookworm-slim, for CI machines that reach only Debian's
# packages: debootstrap's minbase bookworm for one architecture, slimmed as the real image is,
# using this machine's apt source, proxy settings and CA certificates (so apt and pip in the
# Dockerfile work through the same proxy), loaded into the Docker engine as TAG.
#   .ci/standin.sh ARCH TAG       (ARCH: amd64 or arm64; a foreign one needs binfmt and QEMU)
# Built with BuildKit from scratch, so the image records ARCH (`docker import` records the host's).
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 ARCH TAG" >&2; exit 2; }
arch=$1 tag=$2

# The Debian archive this machine's apt uses for bookworm, and the file that names it, read
# from a deb822 .sources file or from sources.list. No mirror is named in the repository.
mirror='' mirror_file=''
for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f $file ]] || continue
    mirror=$(awk 'BEGIN { RS = "" } {
        uri = ""; bookworm = 0; n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
            if (lines[i] ~ /^URIs:/) { split(lines[i], field, /[ \t]+/); uri = field[2] }
            if (lines[i] ~ /^Suites:/ && lines[i] ~ /[ \t]bookworm([ \t]|$)/) bookworm = 1
        }
        if (uri != "" && bookworm) { print uri; exit }
    }' "$file")
    if [[ -n $mirror ]]; then mirror_file=$file; break; fi
done
if [[ -z $mirror && -f /etc/apt/sources.list ]]; then
    mirror=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list \
        | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
    mirror_file=/etc/apt/sources.list
fi
if [[ -z $mirror ]]; then
    echo "standin.sh: no apt source for Debian bookworm in /etc/apt/sources.list or" \
        "/etc/apt/sources.list.d/*.sources; debootstrap needs this machine's Debian mirror" >&2
    exit 1
fi

work=$(mktemp -d /tmp/sage-kmeans-standin.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
echo "standin.sh: debootstrap $arch bookworm from the mirror in $mirror_file, as $tag"
debootstrap --arch="$arch" --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log"; exit 1; }
# This machine's apt source and its settings for reaching it (proxy, release-file checks).
if [[ $mirror_file == *.sources ]]; then
    rm -f "$root/etc/apt/sources.list"
    cp "$mirror_file" "$root/etc/apt/sources.list.d/"
else
    cp "$mirror_file" "$root/etc/apt/sources.list"
fi
grep -lE 'Acquire::.*(Proxy|Check-Valid-Until|Check-Date)' /etc/apt/apt.conf.d/* 2>/dev/null \
    | xargs -r cp -t "$root/etc/apt/apt.conf.d/"
# update-ca-certificates adds these to the bundle when ca-certificates is installed (the
# Dockerfile, the fresh machine), so pip trusts the proxy.
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
