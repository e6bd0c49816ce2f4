#!/usr/bin/env bash
# podman builds and runs the worker image without a Docker engine or a registry (`make image`,
# tests/test_image.py); debootstrap makes its base image from the Debian mirror apt already
# uses. Checks they are present; on Debian/Ubuntu as root, installs Debian's packages. runc,
# not crun: crun fails on machines whose cgroups are a v1/v2 hybrid.
set -euo pipefail

missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (the worker image's build and test)…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "error: building the worker image here needs ${missing[*]}" \
    "(Debian/Ubuntu: apt-get install podman buildah runc debootstrap)" >&2
  exit 1
fi
