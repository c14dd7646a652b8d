"""`/free` on a real ComfyUI server releases the adapters the pack loaded: ComfyUI's memory management, not a
cache of the pack's own, decides how long a file stays in memory."""

import pytest
import requests
from server_harness import (
    comfy_server,
    example_prompt,
    nodes_of_class,
    reference_png,
    run_prompt,
    standin_models,
    upload_image,
)

pytestmark = pytest.mark.server

# What the frontend's "Unload Models and Execution Cache" posts: unload the models, then drop the cached node outputs.
FREE_EVERYTHING = {"unload_models": True, "free_memory": True}
# A prompt without our nodes: the queue runs the /free flags at the end of the item it is on, so once this one is
# done, every later prompt runs after the /free.
AFTER_FREE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


def adapter_reads(log: str, adapter_name: str) -> int:
    """How many times the server read the adapter file: Load IPAdapter logs each read (`<file> is <what>`)."""
    return sum(1 for line in log.splitlines() if f"Decoupled IP-Adapter: {adapter_name} is " in line)


def test_free_releases_the_loaded_adapter_so_the_next_prompt_reads_it_again():
    with comfy_server(models_dir=standin_models()) as server:
        prompt = example_prompt(image=upload_image(server, reference_png(), "ref.png"))
        (loader,) = nodes_of_class(prompt, "DecoupledIPAdapterLoader")
        adapter_name = loader["inputs"]["ipadapter_name"]
        run_prompt(server, prompt)
        assert adapter_reads(server.log(), adapter_name) == 1, server.log_tail()

        requests.post(f"{server.url}/free", json=FREE_EVERYTHING, timeout=30).raise_for_status()
        run_prompt(server, AFTER_FREE)
        run_prompt(server, prompt)
        assert adapter_reads(server.log(), adapter_name) == 2, "the adapter outlived /free in the pack's cache"
