"""The demo (`make demo`): the example workflow through a headless ComfyUI's HTTP API, image written to out/.

Starts ComfyUI (`main.py --cpu`; --gpu leaves that out) with this pack on a free localhost port, uploads a
generated reference picture, queues workflows/api/01_image_prompt.json, prints its progress from the websocket,
and saves the result.

Models: the real files named in the workflow (checkpoints/, clip_vision/, ipadapter/) are looked up in
$DECOUPLED_IPADAPTER_MODELS (default: .host/models), then in the ComfyUI folder's own models/. Without them the
demo uses random stand-ins with the same layout (devkit/standins.py, generated once into ~/.cache) at 64x64 and
a few steps: the picture then only shows that the pipeline runs, not what IP-Adapter does.
"""

import argparse
import os
import sys
import time
from io import BytesIO
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "devkit"))

import repo_paths  # noqa: E402,F401  (devkit/ and tools/ on sys.path)
import comfy_client  # noqa: E402
import server_process  # noqa: E402
import standins  # noqa: E402
from pictures import reference_picture  # noqa: E402

REFERENCE_NAME = "ipadapter_reference.png"
OUTPUT_NAME = "decoupled_ipadapter_demo.png"
STANDIN_SIZE = 64
STANDIN_STEPS = 2
# The workflow's model files: (loader class, input naming the file, models sub-folder).
MODEL_INPUTS = (
    ("CheckpointLoaderSimple", "ckpt_name", "checkpoints"),
    ("CLIPVisionLoader", "clip_name", "clip_vision"),
    ("DecoupledIPAdapterLoader", "ipadapter_name", "ipadapter"),
)


def say(line: str) -> None:
    print(f"[demo] {line}", flush=True)


def required_files(prompt: dict) -> list[str]:
    """The model files the workflow names, as paths relative to a models folder."""
    return [
        f"{folder}/{node['inputs'][name]}"
        for class_type, name, folder in MODEL_INPUTS
        for node in comfy_client.nodes_of_class(prompt, class_type)
    ]


def choose_models(prompt: dict, options, comfyui_dir: Path) -> Path:
    """The first folder holding every model file of the workflow; else the stand-ins, with the prompt made small."""
    candidates = [options.models, comfyui_dir / "models"]
    needed = required_files(prompt)
    for folder in candidates:
        if all((folder / name).is_file() for name in needed):
            say(f"real models from {folder}")
            if not options.gpu:
                say("on the CPU a full-size picture takes many minutes; --gpu lets ComfyUI use a GPU")
            return folder
    say("real models not found; looked for " + ", ".join(needed))
    say("  in " + " and ".join(map(str, candidates)) + " (DECOUPLED_IPADAPTER_MODELS names your models folder)")
    started = time.monotonic()
    say(f"using random stand-in models from {options.standins} (generated once, about a minute)")
    folder = standins.ensure(options.standins, comfyui_dir=comfyui_dir)
    say(f"stand-ins ready after {time.monotonic() - started:.1f} s")
    say("NOTE: these are RANDOM WEIGHTS. The picture is a pipeline check: every node runs through ComfyUI's HTTP API,")
    say("      but it is not an IP-Adapter result. To finish in seconds on a CPU: "
        f"{STANDIN_SIZE}x{STANDIN_SIZE} pixels, {STANDIN_STEPS} steps instead of the workflow's settings.")  # fmt: skip
    comfy_client.configure(prompt, size=STANDIN_SIZE, steps=STANDIN_STEPS)
    return folder


def generate(prompt: dict, options, comfyui_dir: Path, models: Path, reference: bytes) -> bytes:
    """Runs the prompt on a fresh server and returns the PNG bytes of its first output image."""
    started = time.monotonic()
    say(f"starting ComfyUI from {comfyui_dir} ({'GPU' if options.gpu else 'CPU'})")
    with server_process.running_server(comfyui_dir=comfyui_dir, models_dir=models, cpu=not options.gpu) as server:
        say(f"ComfyUI answers on {server.url} after {time.monotonic() - started:.1f} s (pid {server.process.pid})")
        client = server.client
        comfy_client.configure(prompt, image=client.upload_image(reference, REFERENCE_NAME))
        say(f"uploaded the reference image; queueing {options.workflow}")
        started = time.monotonic()

        def report(line: str) -> None:
            say(f"{time.monotonic() - started:6.1f} s  {line}")

        try:
            entry = comfy_client.run_prompt(client, prompt, timeout=options.timeout, report=report)
            images = client.output_images(entry)
            if not images:
                raise comfy_client.ComfyError("the prompt succeeded but produced no image")
            data = client.fetch(images[0])
        except comfy_client.ComfyError as error:
            raise comfy_client.ComfyError(f"{error}\n--- end of the ComfyUI log ---\n{server.log_tail(4000)}") from error
        say(f"finished in {time.monotonic() - started:.1f} s; stopping ComfyUI")
    return data


def run(options) -> Path:
    prompt = comfy_client.load_workflow(options.workflow)
    comfyui_dir = server_process.default_comfyui_dir()
    models = choose_models(prompt, options, comfyui_dir)
    options.out.mkdir(parents=True, exist_ok=True)
    reference = reference_picture()
    (options.out / REFERENCE_NAME).write_bytes(reference)
    say(f"reference image: {options.out / REFERENCE_NAME}")
    data = generate(prompt, options, comfyui_dir, models, reference)
    target = options.out / OUTPUT_NAME
    target.write_bytes(data)
    with Image.open(BytesIO(data)) as picture:
        size = f"{picture.width}x{picture.height}"
    say(f"wrote the {size} image to {target}")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        type=Path,
        default=Path(os.environ.get("DECOUPLED_IPADAPTER_MODELS") or server_process.REPO / ".host" / "models"),
        help="folder with your real models, ComfyUI layout (default: $DECOUPLED_IPADAPTER_MODELS or .host/models)",
    )
    parser.add_argument("--standins", type=Path, default=standins.default_dir(), help="stand-in folder")
    parser.add_argument("--workflow", type=Path, default=comfy_client.EXAMPLE_WORKFLOW, help="API-format workflow")
    parser.add_argument("--out", type=Path, default=server_process.REPO / "out", help="where the image goes")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the prompt may take (%(default)s)")
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: --cpu)")
    options = parser.parse_args(argv)
    options.workflow = options.workflow.resolve()
    try:
        run(options)
    except comfy_client.ComfyError as error:
        print(f"[demo] FAILED: {error}", file=sys.stderr, flush=True)
        return 1
    except Exception as error:  # noqa: BLE001  (any other failure: one clear line, no traceback)
        print(f"[demo] FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
