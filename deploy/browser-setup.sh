#!/usr/bin/env bash
# Chromium and its WebDriver run the page's browser tests (tests/test_web_browser.py), headless.
# Checks they are present; on Debian/Ubuntu as root, installs Debian's `chromium` and
# `chromium-driver` packages. Nothing else is downloaded: the tests point Selenium at
# /usr/bin/chromedriver, so Selenium Manager never fetches a browser or driver of its own.
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install_or_explain "the page's browser tests" \
    "Debian/Ubuntu: apt-get install chromium chromium-driver" chromium chromium-driver
fi
