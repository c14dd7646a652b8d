#!/usr/bin/env bash
# Runs a command with the test host's Python: builds the host if needed (scripts/host.sh), exports COMFYUI_DIR and
# COMFYUI_PYTHON, and replaces a leading `python` in the command with the host's interpreter.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# An assignment, not `eval "$(...)"`: so a failing host.sh stops here (set -e) with its own message as the last line.
HOST_ENV="$(bash "$REPO/scripts/host.sh")"
eval "$(grep -E '^COMFYUI_(DIR|PYTHON)=' <<< "$HOST_ENV" | sed 's/^/export /')"
cd "$REPO"
if [[ "${1:-}" == "python" ]]; then
  shift
  exec "$COMFYUI_PYTHON" "$@"
fi
exec "$@"
