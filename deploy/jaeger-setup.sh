#!/usr/bin/env bash
# Jaeger receives the worker's OTLP spans in the tracing tests (tests/test_tracing.py) and
# serves them back on its query API. It is built from the Go module proxy by deploy/jaeger/:
# a go.mod whose tool directive pins github.com/jaegertracing/jaeger v1.75.0 (the all-in-one
# `cmd/jaeger`, an OpenTelemetry Collector with Jaeger's storage and query), and a go.sum
# holding every module's hash. The binary goes to the project cache under a key of those two
# files, so changing the version builds anew; Go's own build cache makes a rebuild a link.
# Prints the binary's path with --path; prints nothing when it is already built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$here/jaeger/go.mod" "$here/jaeger/go.sum" | sha256sum | cut -c1-12)
binary=${PIXELWATCH_CACHE_DIR:-$HOME/.cache/pixelwatch}/jaeger/$key/jaeger
if [ "${1:-}" = --path ]; then
  echo "$binary"
  exit 0
fi
[ -x "$binary" ] && exit 0
# Go 1.21 and later fetch the toolchain a go.mod asks for from the module proxy by themselves.
if ! command -v go >/dev/null 2>&1 ||
  ! go env GOVERSION | grep -Eq '^go1\.(2[1-9]|[3-9][0-9])'; then
  echo "error: the tracing tests build Jaeger with Go; they need Go 1.21 or newer on PATH" \
    "(https://go.dev/dl/; it then fetches the toolchain deploy/jaeger/go.mod asks for)" >&2
  exit 1
fi
echo "building Jaeger v1.75.0 for the tracing tests (once; several minutes on a cold Go cache)…"
mkdir -p "$(dirname "$binary")"
(cd "$here/jaeger" && go build -o "$binary.partial" github.com/jaegertracing/jaeger/cmd/jaeger)
mv "$binary.partial" "$binary"
