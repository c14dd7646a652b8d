#!/usr/bin/env bash
# The test command (`make test`): builds the test host if needed, then runs every tier of tests.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
eval "$(bash "$REPO/scripts/host.sh" | grep -E '^COMFYUI_(DIR|PYTHON)=' | sed 's/^/export /')"
export DECOUPLED_IPADAPTER_REQUIRE_HOST=1
cd "$REPO"
exec "$COMFYUI_PYTHON" -m pytest tests -p no:cacheprovider -rs "$@"
