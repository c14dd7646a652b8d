#!/usr/bin/env bash
# The test command (`make test`): builds the test host if needed, then runs every tier of tests.
set -euo pipefail
export DECOUPLED_IPADAPTER_REQUIRE_HOST=1
exec bash "$(dirname "${BASH_SOURCE[0]}")/with_host.sh" python -m pytest tests -p no:cacheprovider -rs "$@"
