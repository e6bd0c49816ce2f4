#!/usr/bin/env bash
# The producer examples (docs/examples/, run by tests/test_examples.py) need kcat, a Java
# compiler (Maven comes with deploy/prereqs.sh) and Go. Checks they are present; on
# Debian/Ubuntu as root, installs Debian's `kcat` and `openjdk-17-jdk-headless`. Go is not
# installed here: Debian's is older than the 1.26 that franz-go needs.
set -euo pipefail
# shellcheck source=deploy/apt-install.sh
source "$(dirname "$0")/apt-install.sh"

missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (the producer examples' tests)…"
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "error: the producer examples' tests need ${missing[*]}" \
      "(Debian/Ubuntu: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
# Go 1.21 and later fetch the toolchain a go.mod asks for from the module proxy by themselves.
if ! command -v go >/dev/null 2>&1 ||
  ! go env GOVERSION | grep -Eq '^go1\.(2[1-9]|[3-9][0-9])'; then
  echo "error: the Go producer example needs Go 1.21 or newer on PATH" \
    "(https://go.dev/dl/; it then fetches the 1.26 toolchain docs/examples/go/go.mod asks for)" >&2
  exit 1
fi
