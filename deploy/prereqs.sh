#!/usr/bin/env bash
# Java 17+ and Maven run the local Apache Kafka broker (its jars come from Maven Central).
# Checks they are present; on Debian/Ubuntu as root, installs the missing ones.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

missing=()
if ! command -v java >/dev/null 2>&1; then
  missing+=(openjdk-17-jre-headless)
elif ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
  echo "error: Java 17 or newer is needed for Kafka; found: $(java -version 2>&1 | head -1)" >&2
  exit 1
fi
command -v mvn >/dev/null 2>&1 || missing+=(maven)

if [ ${#missing[@]} -gt 0 ]; then
  apt_install_or_explain "the local Kafka broker" "Java 17+ and Maven" "${missing[@]}"
fi
