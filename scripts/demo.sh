#!/usr/bin/env bash
# The demo (`make demo`): builds the test host if needed (scripts/host.sh), then runs scripts/demo.py with its
# Python: a headless ComfyUI with this pack runs workflows/api/01_image_prompt.json and the image lands in out/.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/with_host.sh" python scripts/demo.py "$@"
