#!/usr/bin/env bash
# Prometheus and promtool check the alert rules and run the observability end-to-end test.
# Checks they are present; on Debian/Ubuntu as root, installs Debian's `prometheus` package.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing prometheus (promtool and a server for the observability tests)…"
  apt-get update -qq
  # --no-install-recommends: the web console libraries and node exporter are not needed here.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    >/dev/null
  # Debian's package starts a server through systemd where there is one; the tests start
  # their own on a free port, so a system one is harmless but not relied on.
else
  echo "error: the rule checks and observability tests need prometheus and promtool" \
    "(Debian/Ubuntu: apt-get install prometheus; elsewhere: https://prometheus.io/download/)" >&2
  exit 1
fi
