#!/usr/bin/env bash
# Builds deploy/Dockerfile's images with podman, without a Docker engine and without a registry:
#
#   deploy/image.sh [TARGET]        # TARGET: worker (default), trainer or model
#
# PYTHON_IMAGE     the base image. Unset: a Debian bookworm base with Python 3.11 made here by
#                  debootstrap from the mirror apt already uses (root only), imported as
#                  localhost/pixelwatch-base:bookworm, and reused while the cache directory
#                  (PIXELWATCH_CACHE_DIR, default ~/.cache/pixelwatch) records it. Set it to
#                  python:3.11.15-slim-bookworm, the Dockerfile's default, where a registry
#                  is reachable.
# IMAGE_TAG        tag of the image built (default: local, as docker-compose.yml names it).
# TORCH_INDEX_URL  the trainer's torch wheels (default: the Dockerfile's, PyTorch's CPU index);
#                  https://pypi.org/simple gives PyPI's CUDA build, gigabytes larger.
# RESULTS_DIR      where the image's size is written as TARGET.json (default: build-results).
#
# podman reads a containers.conf of ours (CONTAINERS_CONF): runc as the runtime, and ulimits no
# higher than this machine's hard limits, since podman's defaults may ask for more.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-worker}
tag=${IMAGE_TAG:-local}
results=${RESULTS_DIR:-build-results}
state=${PIXELWATCH_CACHE_DIR:-$HOME/.cache/pixelwatch}/podman
base_name=localhost/pixelwatch-base:bookworm
case "$target" in
  worker | trainer | model) ;;
  *) echo "error: unknown image target '$target' (worker, trainer or model)" >&2; exit 2 ;;
esac
bash deploy/podman-setup.sh

mkdir -p "$state" "$results"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
cat >"$state/containers.conf" <<CONF
# written by deploy/image.sh
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=$state/containers.conf

if [ -z "${PYTHON_IMAGE:-}" ]; then
  # The base is reused while the cache names it: an empty PIXELWATCH_CACHE_DIR (as in CI)
  # makes it again, so the whole cold path runs.
  marker=$state/base-image.id
  old_base=$(podman image inspect --format '{{.Id}}' "$base_name" 2>/dev/null || true)
  if [ ! -f "$marker" ] || [ "$old_base" != "$(cat "$marker")" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "error: the local base image is made with debootstrap, which needs root;" \
        "run as root, or set PYTHON_IMAGE=python:3.11.15-slim-bookworm" >&2
      exit 1
    fi
    # The mirror apt uses for bookworm's main component, read here and never stored.
    mirror=$(apt-cache policy | awk '$3 == "bookworm/main" { print $2; exit }')
    if [ -z "$mirror" ]; then
      echo "error: no Debian bookworm mirror in apt's sources (apt-cache policy);" \
        "set PYTHON_IMAGE to a Python 3.11 image instead" >&2
      exit 1
    fi
    rootfs=$(mktemp -d "$state/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    echo "making the base image $base_name with debootstrap from $mirror…"
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
      bookworm "$rootfs" "$mirror" >"$state/debootstrap.log" 2>&1 \
      || { tail -20 "$state/debootstrap.log" >&2; echo "error: debootstrap failed" \
        "(log: $state/debootstrap.log)" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --quiet - "$base_name" >/dev/null
    podman image inspect --format '{{.Id}}' "$base_name" >"$marker"
    if [ -n "$old_base" ] && [ "$old_base" != "$(cat "$marker")" ]; then
      podman rmi "$old_base" >/dev/null 2>&1 || true
    fi
    rm -rf "$rootfs"
    trap - EXIT
  fi
  base=$base_name
else
  base=$PYTHON_IMAGE
fi

# pip inside the build trusts the host's CA bundle (package downloads may pass a proxy with its
# own certificate): the bundle is mounted read-only over the base image's own for the RUN steps
# only, and PIP_CERT names it. Nothing of it is committed to a layer.
build_args=(--build-arg "PYTHON_IMAGE=$base")
# The trainer's torch index (the Dockerfile's default: PyTorch's CPU-only wheels).
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  build_args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi
bundle=/etc/ssl/certs/ca-certificates.crt
if [ -f "$bundle" ]; then
  build_args+=(--volume "$bundle:$bundle:ro" --build-arg "PIP_CERT=$bundle")
fi

# --layers=false: podman 4.3 (Debian 12) mishandles RUN --mount=type=bind,from=STAGE with its
# layer cache. A cached stage mounts empty (podman#16281), and a cached RUN is reused after the
# stage it mounts has changed (buildah#4522), which would ship stale code. Without the layer
# cache every build is complete; the pip cache mount still saves the downloads.
image=pixelwatch-$target:$tag
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
echo "building $image on $base…"
podman build --layers=false --file deploy/Dockerfile --target "$target" --tag "$image" \
  --network host --format docker "${build_args[@]}" .
# The image this build replaced keeps no tag: remove it, unless a container still uses it.
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
printf '{"image": "%s", "target": "%s", "base": "%s", "size_bytes": %s, "base_size_bytes": %s, "build_seconds": %s}\n' \
  "$image" "$target" "$base" "$size" "$base_size" "$SECONDS" >"$results/image-$target.json"
echo "built $image: $((size / 1000000)) MB (written to $results/image-$target.json)"
echo "run it with podman's settings of this build: export CONTAINERS_CONF=$CONTAINERS_CONF"
