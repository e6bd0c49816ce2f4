#!/usr/bin/env bash
# Sends two 8x8 images to pixelwatch with kcat: one JSON message a line, key and value split by
# the first tab (-K). The pixels are X/. art (X = 1, . = 0), or 64 numbers in [0, 1].
set -euo pipefail
bootstrap=${PIXELWATCH_BOOTSTRAP:-localhost:9092}
topic=${PIXELWATCH_INPUT_TOPIC:-pixelwatch.images}
kcat -P -b "$bootstrap" -t "$topic" -K $'\t' <<'IMAGES'
square	{"id": "example/square", "pixels": "........ .XXXXXX. .X....X. .X....X. .X....X. .X....X. .XXXXXX. ........"}
corners	{"id": "example/corners", "pixels": "XXX..XXX XXX..XXX XX....XX ........ ........ XX....XX XXX..XXX XXX..XXX"}
IMAGES
