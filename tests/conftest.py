"""Test setup: the pack importable as `decoupled_ipadapter`, and ComfyUI as an in-process library.

Three tiers: pure unit tests (no host); in-process tests (`comfy_host` fixture: ComfyUI imported as a library,
CPU only); real-server tests (tests/server_harness.py starts `main.py --cpu`). The host comes from COMFYUI_DIR,
which `make test` sets to the test host it builds. Without it, host tests are skipped when pytest is run by
hand, and fail under `make test` (DECOUPLED_IPADAPTER_REQUIRE_HOST=1), so a broken host cannot pass silently.
"""

import asyncio
import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "devkit"))

import repo_paths  # noqa: E402,F401  (devkit/ and tools/ on sys.path: official shapes, tiny models, stand-ins, client)
import pack_import  # noqa: E402,F401  (the pack as `decoupled_ipadapter`)
# The tiny test models are small: one thread is faster than two on the 2-core CI machine, and shares it fairly
# with the ComfyUI servers the server tests start.
torch.set_num_threads(1)


def comfyui_dir() -> Path | None:
    value = os.environ.get("COMFYUI_DIR")
    return Path(value) if value else None


def require_host() -> Path:
    directory = comfyui_dir()
    if directory is None or not (directory / "main.py").is_file():
        skip_unless_host_required("no ComfyUI host: run `make test` (it builds one) or set COMFYUI_DIR to a ComfyUI folder")
    return directory


def skip_unless_host_required(message: str) -> None:
    """Skip a test whose host part is missing when pytest is run by hand; fail it under `make test`
    (DECOUPLED_IPADAPTER_REQUIRE_HOST=1), so a broken host cannot pass silently."""
    if os.environ.get("DECOUPLED_IPADAPTER_REQUIRE_HOST") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory):
    """ComfyUI imported in this process (CPU), with temporary input/output/model folders and core nodes loaded."""
    directory = require_host()
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported, or it looks for CUDA
    args.disable_api_nodes = True
    import folder_paths
    import utils.extra_config  # noqa: F401  (before `nodes`, which would shadow the top-level `utils` package)

    base = tmp_path_factory.mktemp("comfy_base")
    for kind in ("input", "output", "temp"):
        (base / kind).mkdir()
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    from decoupled_ipadapter.nodes import register_model_folder

    register_model_folder()
    return {"dir": directory, "base": base}


# The run's time per tier (setup, call and teardown of each test; a module's server starts in its first test's
# setup), printed at the end: the README's per-tier CI times come from these lines.
TIER_SECONDS: dict[str, float] = {}
TIER_OF_TEST: dict[str, str] = {}
TESTS_RUN: dict[str, set] = {}
TIERS = ("unit", "in-process", "server and browser")


# The tests marked `frontend` (what `make test-latest` reruns); tests/browser.py refuses to open the editor page for
# any other, so a new browser test cannot be left out of the newest front-end's pass.
FRONTEND_TESTS: set[str] = set()


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("frontend"):
            FRONTEND_TESTS.add(item.nodeid)
        if item.get_closest_marker("server"):
            tier = TIERS[2]
        elif item.get_closest_marker("host") or "comfy_host" in getattr(item, "fixturenames", ()):
            tier = TIERS[1]
        else:
            tier = TIERS[0]
        TIER_OF_TEST[item.nodeid] = tier


def pytest_runtest_logreport(report):
    tier = TIER_OF_TEST.get(report.nodeid)
    if tier is not None:
        TIER_SECONDS[tier] = TIER_SECONDS.get(tier, 0.0) + report.duration
        TESTS_RUN.setdefault(tier, set()).add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    """Print the figures the tests measured (parity errors) and the time of each tier, so a run's log states them."""
    if TIER_SECONDS:
        tiers = [f"{tier} {TIER_SECONDS[tier] / 60:.1f} min ({len(TESTS_RUN[tier])} tests)" for tier in TIERS
                 if tier in TIER_SECONDS]  # fmt: skip
        terminalreporter.write_line("time per tier: " + "; ".join(tiers))
    for module, label in (
        ("test_parity_diffusers", "UNet parity with diffusers"),
        ("test_parity_flux", "XLabs Flux parity with diffusers (|Δ| / max|IP term|)"),
        ("test_parity_controls", "controls parity with diffusers (|Δ| / max|IP term|)"),
        ("test_parity_sd3", "InstantX SD3.5 parity with diffusers (|Δ| / max|IP term|)"),
        ("test_parity_instantx_flux", "InstantX Flux parity with its reference formula (|Δ| / max|IP term|)"),
        ("test_formats_detection", "projection parity with diffusers"),
    ):
        errors = getattr(sys.modules.get(module), "PARITY_ERRORS", None)
        if errors:
            case, error = max(errors, key=lambda item: item[1])
            terminalreporter.write_line(f"{label} (fp32): {len(errors)} cases, largest |Δ| = {error:.3g} ({case})")
