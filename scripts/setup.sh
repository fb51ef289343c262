#!/usr/bin/env bash
# Sets up muxgate in a virtual environment at the repo root (.venv). Idempotent: re-running only
# reinstalls when pyproject.toml changed. Needs Python >= 3.11 and access to PyPI.
#   scripts/setup.sh          what `muxgate serve` needs
#   scripts/setup.sh --test   plus the test tools, and Debian's chromium for the report test
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
fi

pick_python() {
  for py in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "muxgate needs Python >= 3.11 (set PYTHON=/path/to/python)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
stamp=.venv/.muxgate-installed$( [ -n "$extras" ] && echo "-test" )
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing muxgate$extras and its dependencies into .venv (first time: a few minutes)" >&2
  # torch is pinned in pyproject.toml to a CPU build; on a GPU machine install the matching CUDA
  # wheel of the same version into .venv first and this step keeps it.
  .venv/bin/python -m pip install --quiet -e ".$extras"
  echo "$want" > "$stamp"
fi
if [ -n "$extras" ]; then
  scripts/install-chromium.sh
fi
