"""Makes this pack importable as the package `decoupled_ipadapter`, as ComfyUI imports it under its folder's path.

Imported by tools/clip_scores.py, the tests' conftest, the benchmark and the stand-in generator; it changes nothing
else (no pytest, no ComfyUI, no torch settings).
"""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "decoupled_ipadapter"

if PACKAGE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[PACKAGE] = _module
    _spec.loader.exec_module(_module)
