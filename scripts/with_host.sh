#!/usr/bin/env bash
# Runs a command with the test host's Python: builds the host if needed (scripts/host.sh), exports COMFYUI_DIR and
# COMFYUI_PYTHON, and replaces a leading `python` in the command with the host's interpreter.
# Options before the command:
#   --overlay PINS   the exact versions in the file PINS are laid over the host (scripts/overlay.sh) and put first on
#                    PYTHONPATH, for the command and the ComfyUI servers it starts
#   --frontend PINS  the same, and those servers serve the overlay's comfyui_frontend_package: COMFYUI_FRONT_END_ROOT
#                    names its static/ folder, which devkit/server_process.py passes as ComfyUI's --front-end-root
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# An assignment, not `eval "$(...)"`: so a failing host.sh stops here (set -e) with its own message as the last line.
HOST_ENV="$(bash "$REPO/scripts/host.sh")"
eval "$(grep -E '^COMFYUI_(DIR|PYTHON)=' <<< "$HOST_ENV" | sed 's/^/export /')"
while [[ "${1:-}" == --overlay || "${1:-}" == --frontend ]]; do
  OVERLAY="$(bash "$REPO/scripts/overlay.sh" "$2")"
  export PYTHONPATH="$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
  if [[ "$1" == --frontend ]]; then
    export COMFYUI_FRONT_END_ROOT="$OVERLAY/comfyui_frontend_package/static"
    [[ -f "$COMFYUI_FRONT_END_ROOT/index.html" ]] || { echo "[host] $2 gives no front-end: $COMFYUI_FRONT_END_ROOT/index.html is missing" >&2; exit 2; }
  fi
  shift 2
done
cd "$REPO"
if [[ "${1:-}" == "python" ]]; then
  shift
  exec "$COMFYUI_PYTHON" "$@"
fi
exec "$@"
