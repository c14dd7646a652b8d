"""Real ComfyUI servers (`main.py --cpu`) with the pack: the node listing, the example workflow, a bad prompt.

The workflow runs on random stand-in models (devkit/standins.py; generated once, about a minute, then cached)
at 64x64 pixels and 2 steps.
"""

import json
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image
from server_harness import (
    PACK_LINK,
    REJECTED,
    comfy_server,
    example_prompt,
    fetch_output_image,
    nodes_of_class,
    object_info,
    prompt_error,
    reference_png,
    run_prompt,
    standin_models,
    upload_image,
)
from workflow_checks import api_workflow, shrunk

pytestmark = pytest.mark.server

GOLDEN_SCHEMA = Path(__file__).resolve().parent / "golden" / "node_schema.json"
OUR_NODES = tuple(node["node_id"] for node in json.loads(GOLDEN_SCHEMA.read_text()))  # every node the pack registers
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MISSING_ADAPTER = "no-such-adapter_sd15.safetensors"


class LeaveTheBlock(Exception):
    """Raised inside a server block to check that the harness stops the server on the way out."""


PACK_PATH = f"/custom_nodes/{PACK_LINK}"


def pack_log_problems(log: str) -> list[str]:
    """Lines of ComfyUI's start-up log that report our pack failing to import."""
    failed = ("IMPORT FAILED", "Cannot import")
    return [line for line in log.splitlines() if PACK_PATH in line and any(mark in line for mark in failed)]


def pack_was_loaded(log: str) -> bool:
    """ComfyUI's import-times table lists the pack as `   0.1 seconds: <base>/custom_nodes/decoupled-ipadapter`."""
    return any(line.rstrip().endswith(PACK_PATH) and "seconds:" in line for line in log.splitlines())


def test_pack_loads_and_every_node_is_documented():
    with pytest.raises(LeaveTheBlock):
        with comfy_server() as server:
            process = server.process
            log = server.log()
            assert not pack_log_problems(log), log[-6000:]
            assert pack_was_loaded(log), log[-6000:]
            info = object_info(server)
            missing = [node for node in OUR_NODES if node not in info]
            assert not missing, f"not listed by /object_info: {missing}\n{log[-6000:]}"
            for node in OUR_NODES:
                schema = info[node]
                assert schema["description"].strip(), node
                inputs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
                assert inputs, node
                for name, spec in inputs.items():
                    options = spec[1] if len(spec) > 1 else {}
                    assert options.get("tooltip", "").strip(), f"{node}.{name} has no tooltip"
                tooltips = schema.get("output_tooltips") or []
                assert len(tooltips) == len(schema["output"]), node
                assert schema["output"] or schema["output_node"], f"{node} has no output and is not an output node"
                assert all(tip and tip.strip() for tip in tooltips), f"{node} has an output without a tooltip"
            raise LeaveTheBlock
    assert process.poll() is not None, "the server still runs after its block ended with an exception"


@pytest.fixture(scope="module")
def standin_server():
    with comfy_server(models_dir=standin_models()) as server:
        yield server


@pytest.fixture(scope="module")
def reference_name(standin_server):
    return upload_image(standin_server, reference_png(), "reference.png")


def run_to_png(server, prompt) -> bytes:
    return fetch_output_image(server, run_prompt(server, prompt))


def assert_png(data: bytes, size: int) -> None:
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (size, size)
        image.load()  # decodes every row: a truncated file raises here


def test_example_workflow_runs_on_standin_models(standin_server, reference_name):
    data = run_to_png(standin_server, example_prompt(image=reference_name, size=64, steps=2, seed=1))
    assert_png(data, 64)


def test_missing_adapter_file_gives_a_clear_error_and_the_server_goes_on(standin_server, reference_name):
    bad = example_prompt(image=reference_name, size=64, steps=2, seed=2)
    nodes_of_class(bad, "DecoupledIPAdapterLoader")[0]["inputs"]["ipadapter_name"] = MISSING_ADAPTER
    message = prompt_error(standin_server, bad)
    assert message.startswith(REJECTED), f"refused only when it ran, not when it was queued: {message}"
    assert f"'{MISSING_ADAPTER}' is not in the ipadapter model folders" in message, message

    data = run_to_png(standin_server, example_prompt(image=reference_name, size=64, steps=2, seed=3))
    assert_png(data, 64)


@pytest.mark.parametrize(
    ("workflow", "node_type", "input_name", "value"),
    [
        ("01_image_prompt", "DecoupledIPAdapterEncode", "crop", "stretch"),
        ("09_two_references", "DecoupledIPAdapterCombineEmbeds", "method", "median"),
        ("11_unified_loader", "DecoupledIPAdapterUnifiedLoader", "preset", "SD2 standard"),
    ],
)
def test_an_invalid_option_of_our_nodes_is_refused_when_queued(standin_server, reference_name, workflow, node_type, input_name, value):
    """Every host refuses it at POST /prompt with our message (0.3.75 itself does not check V3 combos)."""
    prompt = shrunk(api_workflow(workflow))
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = reference_name
    (target,) = nodes_of_class(prompt, node_type)
    target["inputs"][input_name] = value
    message = prompt_error(standin_server, prompt)
    assert message.startswith(REJECTED) and f"'{value}'" in message and input_name in message, message


def advanced_prompt(reference_name: str, *, seed: int, **options) -> dict:
    """The example workflow with Apply IPAdapter (advanced) in place of Apply IPAdapter."""
    prompt = example_prompt(image=reference_name, size=64, steps=2, seed=seed)
    (apply,) = nodes_of_class(prompt, "DecoupledIPAdapterApply")
    apply["class_type"] = "DecoupledIPAdapterApplyAdvanced"
    apply["inputs"].update({"weight_type": "linear", "embeds_scaling": "V only", "block_weights": "", **options})
    return prompt


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"weight_type": "style transfer strong"}, "'style transfer strong' is not an option of weight_type"),
        ({"embeds_scaling": "V+K"}, "'V+K' is not an option of embeds_scaling"),
        ({"block_weights": "{'up': 1}"}, "block_weights \"{'up': 1}\": it is not valid JSON"),
    ],
)
def test_advanced_options_the_text_refutes_are_refused_when_queued(standin_server, reference_name, options, expected):
    message = prompt_error(standin_server, advanced_prompt(reference_name, seed=4, **options))
    assert message.startswith(REJECTED) and expected in message, message


def test_advanced_style_transfer_runs_and_a_missing_block_is_reported_by_the_node(standin_server, reference_name):
    style = run_to_png(standin_server, advanced_prompt(reference_name, seed=5, weight_type="style transfer"))
    assert_png(style, 64)
    message = prompt_error(standin_server, advanced_prompt(reference_name, seed=5, block_weights='{"down": {"block_3": 1.0}}'))
    assert not message.startswith(REJECTED), message
    assert 'Apply IPAdapter (advanced): block_weights "{\"down\": {\"block_3\": 1.0}}": "down" has no "block_3"' in message, message
    assert "Write a diffusers scale dict such as" in message
    assert_png(run_to_png(standin_server, advanced_prompt(reference_name, seed=6, block_weights='{"up": {"block_1": 1.0}}')), 64)


def test_regional_conditioning_runs_with_an_unconnected_negative(standin_server, reference_name):
    """Two regions through Combine Params and Apply IPAdapter from Params; the sampler reads the region's masked
    positive, while its negative, unconnected, comes out as nothing (None) and ComfyUI runs on."""
    prompt = example_prompt(image=reference_name, size=64, steps=1, seed=7)
    del prompt["5"]  # the Encode node: the regions encode their own pictures
    prompt["20"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    region = {"image": ["4", 0], "image_weight": 0.7, "prompt_weight": 1.0, "weight_type": "linear", "start_at": 0.0, "end_at": 1.0}
    prompt["21"] = {"class_type": "DecoupledIPAdapterRegionalConditioning", "inputs": {**region, "mask": ["20", 0], "positive": ["7", 0]}}
    prompt["22"] = {"class_type": "DecoupledIPAdapterRegionalConditioning", "inputs": {**region, "weight_type": "ease in"}}
    prompt["23"] = {"class_type": "DecoupledIPAdapterCombineParams", "inputs": {"params_1": ["21", 0], "params_2": ["22", 0]}}
    prompt["6"] = {
        "class_type": "DecoupledIPAdapterFromParams",
        "inputs": {
            "model": ["1", 0], "ipadapter": ["3", 0], "clip_vision": ["2", 0], "ipadapter_params": ["23", 0],
            "combine_embeds": "concat", "embeds_scaling": "V only",
        },
    }  # fmt: skip
    prompt["10"]["inputs"]["positive"] = ["21", 1]
    assert_png(run_to_png(standin_server, prompt), 64)


def test_weights_that_are_not_numbers_are_refused_when_queued(standin_server, reference_name):
    """IPAdapter Weights' text is checked at POST /prompt; its list reaches Apply's weight through a link."""
    prompt = example_prompt(image=reference_name, size=64, steps=1, seed=8)
    strategy = {"weights": "1.0, half", "timing": "linear", "frames": 2, "start_frame": 0, "end_frame": 9999,
                "add_starting_frames": 0, "add_ending_frames": 0, "method": "full batch"}  # fmt: skip
    prompt["30"] = {"class_type": "DecoupledIPAdapterWeights", "inputs": strategy}
    (apply,) = nodes_of_class(prompt, "DecoupledIPAdapterApply")
    apply["inputs"].update(weight=["30", 0], unfold_batch=True)
    message = prompt_error(standin_server, prompt)
    assert message.startswith(REJECTED) and "'half'" in message and "weights" in message, message
