"""Puts devkit/ and tools/ on sys.path, so the development scripts, the tests and these modules import each other
by plain module name (`import standins`, `import comfy_client`, `import pack_import`). Import it first.

devkit/ holds what the tests and the development scripts share; it imports neither `tests/` nor `scripts/`.
The repository root itself is never put on sys.path: its `nodes/` would shadow ComfyUI's `nodes` module.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

for folder in (REPO / "tools", REPO / "devkit"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
