"""Real ComfyUI servers for the tests: `comfy_server()` and small helpers over the HTTP API.

    with comfy_server(models_dir=standin_models()) as server:
        entry = run_prompt(server, example_prompt(image=upload_image(server, reference_png(), "ref.png")))
        png = fetch_output_image(server, entry)

The server is `main.py --cpu` of the host (COMFYUI_DIR) on a free localhost port, with a temporary base directory
whose custom_nodes/ holds a link to this pack (plus any `extra_custom_nodes` folders), run by this interpreter.
It is stopped by its PID when the block ends, also on failure. The code is devkit/server_process.py and
tools/comfy_client.py, shared with `make demo`.
"""

import contextlib
import sys
from pathlib import Path

import comfy_client
import server_process
import standins
from comfy_client import ComfyError, nodes_of_class  # noqa: F401  (re-exported for the tests)
from conftest import require_host
from pictures import reference_picture
from server_process import Server  # noqa: F401  (re-exported for the tests)

PACK_LINK = server_process.PACK_LINK
REJECTED = comfy_client.REJECTED


@contextlib.contextmanager
def comfy_server(*, models_dir: Path | None = None, extra_custom_nodes=(), startup_timeout: float = 240.0):
    """A started ComfyUI `Server` (`.url`, `.process`, `.log()`, `.client`) with the pack, for one `with` block."""
    comfyui_dir = require_host()
    with server_process.running_server(
        comfyui_dir=comfyui_dir,
        python=sys.executable,
        models_dir=models_dir,
        extra_custom_nodes=extra_custom_nodes,
        startup_timeout=startup_timeout,
    ) as server:
        yield server


def standin_models(groups=("demo",)) -> Path:
    """The stand-in models folder with the files of `groups` (devkit/standins.py: "demo", "workflows", "sdxl", "flux";
    generated on first use, a minute or more, then cached)."""
    return standins.ensure(comfyui_dir=require_host(), groups=groups)


def reference_png() -> bytes:
    return reference_picture(size=256)


def example_prompt(*, image: str, size: int = 64, steps: int = 2, seed: int = 0) -> dict:
    """workflows/api/01_image_prompt.json with the uploaded reference, a small picture and few steps."""
    return comfy_client.configure(comfy_client.load_workflow(), image=image, size=size, steps=steps, seed=seed)


def object_info(server: Server, node_class: str | None = None) -> dict:
    return server.client.object_info(node_class)


def upload_image(server: Server, data: bytes, name: str) -> str:
    """Stores PNG bytes in the server's input folder; returns the name for LoadImage."""
    return server.client.upload_image(data, name)


def run_prompt(server: Server, prompt: dict, *, timeout: float = 600.0) -> dict:
    """Queues `prompt` and follows it to the end: its /history entry. A rejected or failed prompt raises ComfyError
    with ComfyUI's message and the end of the server log."""
    try:
        return comfy_client.run_prompt(server.client, prompt, timeout=timeout)
    except ComfyError as error:
        raise ComfyError(f"{error}\n--- end of the ComfyUI log ---\n{server.log_tail(4000)}") from error


def saved_latent(server: Server, prompt: dict, *, node_id: str = "900"):
    """Runs `prompt` and returns the latent its SaveLatent node `node_id` wrote (`[B, C, H, W]`)."""
    from safetensors.torch import load_file

    entry = run_prompt(server, prompt)
    (saved,) = entry["outputs"][node_id]["latents"]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def prompt_error(server: Server, prompt: dict, *, timeout: float = 600.0) -> str:
    """ComfyUI's message for a prompt that must not succeed: the /prompt rejection (it begins with REJECTED) or
    the failing node's error from /history."""
    try:
        comfy_client.run_prompt(server.client, prompt, timeout=timeout)
    except ComfyError as error:
        return str(error)
    raise AssertionError("the prompt succeeded, but an error was expected")


def fetch_output_image(server: Server, entry: dict, index: int = 0) -> bytes:
    images = server.client.output_images(entry)
    if len(images) <= index:
        raise ComfyError(f"the prompt has {len(images)} output images: {entry.get('outputs')}")
    return server.client.fetch(images[index])


@contextlib.contextmanager
def restartable_comfy_server(*, models_dir: Path | None = None, startup_timeout: float = 240.0,
                             threads: int | None = None):  # fmt: skip
    """A started server that `.kill()` stops at once and `.start()` starts again on the same URL and base
    directory (`.url`, `.base`, `.server` for the current process); `threads`: OMP_NUM_THREADS for it."""
    with server_process.server_process(
        comfyui_dir=require_host(), python=sys.executable, models_dir=models_dir, startup_timeout=startup_timeout,
        threads=threads,
    ) as restartable:
        yield restartable
