#!/usr/bin/env bash
# Runs a command with the test host's Python: builds the host if needed (scripts/host.sh), exports COMFYUI_DIR and
# COMFYUI_PYTHON, and replaces a leading `python` in the command with the host's interpreter.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
eval "$(bash "$REPO/scripts/host.sh" | grep -E '^COMFYUI_(DIR|PYTHON)=' | sed 's/^/export /')"
cd "$REPO"
if [[ "${1:-}" == "python" ]]; then
  shift
  exec "$COMFYUI_PYTHON" "$@"
fi
exec "$@"
