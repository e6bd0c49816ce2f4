#!/usr/bin/env bash
# Chromium and its WebDriver run the page's browser tests (tests/test_web_browser.py), headless.
# Checks they are present; on Debian/Ubuntu as root, installs Debian's `chromium` and
# `chromium-driver` packages. Nothing else is downloaded: the tests point Selenium at
# /usr/bin/chromedriver, so Selenium Manager never fetches a browser or driver of its own.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver (the page's browser tests)…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "error: the page's browser tests need /usr/bin/chromium and /usr/bin/chromedriver" \
    "(Debian/Ubuntu: apt-get install chromium chromium-driver)" >&2
  exit 1
fi
