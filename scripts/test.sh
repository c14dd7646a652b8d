#!/usr/bin/env bash
# The test commands (`make test`, `make test-latest`): builds the test host if needed, then runs pytest over tests/.
# Arguments: scripts/with_host.sh's options (--overlay PINS, --frontend PINS) first, then pytest's.
set -euo pipefail
# The workflow tests open ComfyUI's front-end in Debian's chromium (driven by playwright, never its own download).
if [ ! -x /usr/bin/chromium ]; then
    echo "[test] installing Debian's chromium for the front-end tests" >&2
    sudo_if_needed=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo_if_needed apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
host_options=()
while [[ "${1:-}" == --overlay || "${1:-}" == --frontend ]]; do
  host_options+=("$1" "$2")
  shift 2
done
export DECOUPLED_IPADAPTER_REQUIRE_HOST=1
exec bash "$(dirname "${BASH_SOURCE[0]}")/with_host.sh" "${host_options[@]}" python -m pytest -p no:cacheprovider -rs --durations=15 "$@"
