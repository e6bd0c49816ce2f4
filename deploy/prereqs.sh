#!/usr/bin/env bash
# Java 17+ and Maven run the local Apache Kafka broker (its jars come from Maven Central).
# Checks they are present; on Debian/Ubuntu as root, installs the missing ones.
set -euo pipefail

missing=()
if ! command -v java >/dev/null 2>&1; then
  missing+=(openjdk-17-jre-headless)
elif ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
  echo "error: Java 17 or newer is needed for Kafka; found: $(java -version 2>&1 | head -1)" >&2
  exit 1
fi
command -v mvn >/dev/null 2>&1 || missing+=(maven)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (needed by the local Kafka broker)…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "error: the local Kafka broker needs Java 17+ and Maven; install: ${missing[*]}" >&2
  exit 1
fi
