#!/usr/bin/env bash
# Moves the pin of `make test-latest`: `make pin-frontend` (the newest comfyui-frontend-package on PyPI) or
# `make pin-frontend FRONTEND=1.58.1`. Rewrites scripts/frontend-latest.txt with that front-end and the newest
# comfyui-workflow-templates and comfyui-embedded-docs, each with every package it needs at the version pip resolves
# (nothing is installed: pip's dry run). Then run `make test-latest`: it lays the new pins over the test host.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FRONTEND="${1:-}"
OUT="$REPO/scripts/frontend-latest.txt"
REPORT="$(mktemp)"
trap 'rm -f "$REPORT"' EXIT
python3 -m pip --disable-pip-version-check install --quiet --dry-run --ignore-installed --report "$REPORT" \
  "comfyui-frontend-package${FRONTEND:+==$FRONTEND}" comfyui-workflow-templates comfyui-embedded-docs
python3 - "$REPORT" "$OUT" <<'PYEOF'
import json, sys
report, out = sys.argv[1], sys.argv[2]
pins = sorted(f"{item['metadata']['name']}=={item['metadata']['version']}" for item in json.load(open(report))["install"])
header = (
    "# `make test-latest`: the newest ComfyUI front-end, with the workflow templates and embedded docs it reads, laid\n"
    "# over the ComfyUI 0.3.75 test host (scripts/overlay.sh) and served with --front-end-root. Written by\n"
    "# scripts/pin_frontend.sh (`make pin-frontend [FRONTEND=x.y.z]`): every package these three need, at the version pip\n"
    "# resolved. ComfyUI 0.3.75 itself pins front-end 1.32.9 (scripts/host-requirements.txt).\n"
)
open(out, "w").write(header + "\n".join(pins) + "\n")
print("\n".join(pins))
PYEOF
echo "[pin] wrote $OUT" >&2
