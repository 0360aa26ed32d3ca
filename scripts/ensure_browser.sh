#!/usr/bin/env bash
# ensure_browser.sh: Debian's Chromium and ChromeDriver for the browser test (same version, from apt).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/apt.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver
fi
