#!/usr/bin/env bash
# Installs Debian's headless-capable `chromium` where it is missing; the HTML report test renders
# the report page in it. Idempotent: does nothing when a chromium binary is already on PATH.
# Needs root (or sudo) and apt on Debian/Ubuntu; elsewhere it says what to install and exits 0,
# so the test suite still runs (the chromium test then skips with its reason).
set -euo pipefail

for bin in chromium chromium-browser; do
  if command -v "$bin" >/dev/null 2>&1; then
    exit 0
  fi
done

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get here; install Chromium yourself to run the HTML report test" >&2
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-chromium: not root and no passwordless sudo; run as root: apt-get install -y chromium" >&2
    exit 0
  fi
fi

echo "install-chromium: installing Debian's chromium (for the HTML report test)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian names the package `chromium`; Ubuntu only ships a snap shim under `chromium-browser`.
if apt-cache show chromium >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
  echo "install-chromium: no 'chromium' package in this distribution's apt sources" >&2
fi
