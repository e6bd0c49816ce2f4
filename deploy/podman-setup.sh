#!/usr/bin/env bash
# podman builds and runs the worker image without a Docker engine or a registry (`make image`,
# tests/test_image.py); debootstrap makes its base image from the Debian mirror apt already
# uses. Checks they are present; on Debian/Ubuntu as root, installs Debian's packages. runc,
# not crun: crun fails on machines whose cgroups are a v1/v2 hybrid.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_install_or_explain "the worker image's build and test" \
    "Debian/Ubuntu: apt-get install podman buildah runc debootstrap" "${missing[@]}"
fi
