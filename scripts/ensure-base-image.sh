#!/usr/bin/env bash
# Make sure the base image (debian:trixie-slim) exists locally. Pull it where a registry is
# reachable; otherwise build an equivalent from the Debian package archive with debootstrap and
# `docker import` it, so the project builds on machines with no container registry at all.
set -euo pipefail

image=${BASE_IMAGE:?BASE_IMAGE is not set (see .env)}
suite=${DEBIAN_SUITE:?DEBIAN_SUITE is not set (see .env)}
mirror=${DEBIAN_MIRROR:?DEBIAN_MIRROR is not set (see .env)}

if docker image inspect "${image}" >/dev/null 2>&1; then
    exit 0
fi
echo "== ${image} is not present: trying to pull it"
if timeout 120 docker pull "${image}" >/dev/null 2>&1; then
    exit 0
fi
echo "== no registry reachable: building ${image} with debootstrap from ${mirror}"
if ! command -v debootstrap >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
    else
        echo "error: debootstrap is needed to build ${image} without a registry; install it (apt-get install debootstrap) or make the image available (docker pull/load ${image})" >&2
        exit 1
    fi
fi
[[ $(id -u) -eq 0 ]] || { echo "error: debootstrap must run as root (sudo make image)" >&2; exit 1; }

rootfs=$(mktemp -d /var/tmp/slurmlab-rootfs.XXXXXX)
trap 'rm -rf "${rootfs}"' EXIT
debootstrap --variant=minbase "${suite}" "${rootfs}" "${mirror}" >"${rootfs}.log" 2>&1 \
    || { tail -20 "${rootfs}.log" >&2; echo "error: debootstrap failed (log: ${rootfs}.log)" >&2; exit 1; }
rm -f "${rootfs}.log"
# Like the official slim image: no package lists or caches in the layer.
rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin
tar -C "${rootfs}" -c . | docker import \
    --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "${image}" >/dev/null
echo "== built ${image} locally"
