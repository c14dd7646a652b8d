#!/usr/bin/env bash
# Lays exact package versions over the test host's Python without changing it: `scripts/overlay.sh PINS` installs the
# `name==version` lines of the file PINS, with no dependencies (the file names every package it needs), into
# .host/overlays/<PINS's name without .txt>/ and prints that folder on stdout (progress goes to stderr). Put it first
# on PYTHONPATH and those versions are imported instead of the host's. The folder is rebuilt when PINS changes.
# The interpreter is COMFYUI_PYTHON (scripts/with_host.sh sets it), so an overlay also works over a ComfyUI of the
# user's (COMFYUI_DIR), whose environment it never touches.
#
# Used for scripts/frontend-latest.txt (the newest front-end, its workflow templates and embedded docs; `make
# test-latest`) and scripts/oldest-requirements.txt (the oldest end of the pack's requirement ranges; `make test`).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
[[ -f "$PINS" ]] || { echo "[overlay] $1: no such pins file" >&2; exit 2; }
PY="${COMFYUI_PYTHON:?scripts/overlay.sh runs under scripts/with_host.sh, which sets COMFYUI_PYTHON}"
TARGET="$REPO/.host/overlays/$(basename "$PINS" .txt)"
STAMP="$(cat "$PINS" | sha256sum | cut -c1-16)"
mkdir -p "$REPO/.host/overlays"
if command -v flock > /dev/null; then
  exec 9> "$TARGET.lock"
  flock 9
fi
if [[ ! -f "$TARGET/.stamp" || "$(cat "$TARGET/.stamp")" != "$STAMP" ]]; then
  echo "[overlay] installing $(grep -c '==' "$PINS") pinned packages of $(basename "$PINS") into $TARGET" >&2
  rm -rf "$TARGET"
  "$PY" -m pip --disable-pip-version-check --no-cache-dir install --quiet --no-deps --no-compile \
    --target "$TARGET" -r "$PINS" >&2
  echo "$STAMP" > "$TARGET/.stamp"
fi
echo "$TARGET"
