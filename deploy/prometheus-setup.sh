#!/usr/bin/env bash
# Prometheus and promtool check the alert rules and run the observability end-to-end test.
# Checks they are present; on Debian/Ubuntu as root, installs Debian's `prometheus` package
# (without recommends: the web console libraries and node exporter are not needed). Debian's
# package starts a server through systemd where there is one; the tests start their own on a
# free port, so a system one is harmless but not relied on.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  APT_OPTIONS=--no-install-recommends apt_install_or_explain "the rule checks and observability tests" \
    "Debian/Ubuntu: apt-get install prometheus; elsewhere: https://prometheus.io/download/" \
    prometheus
fi
