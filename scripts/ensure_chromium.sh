#!/usr/bin/env bash
# The browser check needs Debian's `chromium` (the system browser; nothing downloads a browser build).
# Installs it with apt when missing and this user may; otherwise says what to run.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: installing Debian's chromium (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "ensure_chromium: chromium not found; install it (Debian/Ubuntu: sudo apt-get install chromium) and run again" >&2
exit 2
