"""The SDXL example workflows (08_sdxl_vit_h, 13_sdxl_style_transfer, 14_sdxl_style_and_composition) on a full-size
SDXL stand-in, in one server of their own.

ComfyUI recognises SDXL only from the real layer sizes, so the stand-in is a full sd_xl_base_1.0-shaped checkpoint
(3.47 B parameters, 6.6 GB fp16, random values; devkit/standins.py writes it tensor by tensor). On a CPU ComfyUI
holds its UNet in fp32: this server alone needs about 13 GB of RAM, so it runs by itself, after the SD1.5 ones; it
loads the checkpoint once for all three workflows, which run at 64x64 and 2 steps.
Checks: each API file validates against /object_info and runs (ComfyUI builds model_base.SDXL from the file); each
editor file opens in the front-end, its graphToPrompt equals the API file, and it runs when queued from there.
Style transfer changes the picture, and its map is the block_weights the note gives; style and composition reads
the composition reference in its composition module.
"""

import pytest
from browser import frontend_page, playwright_driver
from server_harness import comfy_server, standin_models
from test_workflows import assert_differs, saved_picture, upload_inputs, validate_and_run
from test_workflows_browser import check_in_the_editor
from workflow_checks import SDXL_WORKFLOWS, api_workflow, build_workflows, node_ids, shrunk, with_inputs


pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def sdxl_server():
    models = standin_models(groups=("demo", "sdxl"))
    with comfy_server(models_dir=models) as server:
        upload_inputs(server)
        yield server


@pytest.fixture(scope="module")
def sdxl_page(sdxl_server):
    with playwright_driver() as playwright, frontend_page(playwright, sdxl_server.url) as page:
        yield page


@pytest.mark.parametrize("name", SDXL_WORKFLOWS)
@pytest.mark.frontend
def test_sdxl_workflow_runs_through_the_api_and_the_editor(sdxl_server, sdxl_page, name):
    validate_and_run(sdxl_server, name)
    # ComfyUI names the model class it built from the checkpoint: model_base.SDXL, not an SD1.5 fallback.
    assert "Requested to load SDXL\n" in sdxl_server.log(), sdxl_server.log_tail()
    check_in_the_editor(sdxl_server, sdxl_page, name)


def _advanced(name: str) -> tuple[dict, str]:
    prompt = shrunk(api_workflow(name))
    (apply,) = node_ids(prompt, "DecoupledIPAdapterApplyAdvanced")
    return prompt, apply


def test_style_transfer_changes_the_picture_and_is_the_notes_block_weights(sdxl_server):
    """13_sdxl_style_transfer: weight 0 gives another picture; weight_type linear with either block_weights of the
    note (up_blocks.0.attentions.1 as diffusers' scale dict, index 6) gives the same one, bit for bit."""
    name = "13_sdxl_style_transfer"
    prompt, apply = _advanced(name)
    styled = saved_picture(sdxl_server, prompt)
    assert_differs(styled, {"the image prompt (weight 0)": saved_picture(sdxl_server, with_inputs(prompt, {apply: {"weight": 0.0}}))}, name)
    for text in build_workflows.STYLE_BLOCK_WEIGHTS:
        by_hand = with_inputs(prompt, {apply: {"weight_type": "linear", "block_weights": text}})
        assert (saved_picture(sdxl_server, by_hand) == styled).all(), f"{name}: block_weights {text} differ from style transfer"


def test_style_and_composition_reads_the_composition_reference(sdxl_server):
    """14_sdxl_style_and_composition: the picture differs from style transfer alone (the composition module acts)
    and from the same type without composition_embeds (that module then reads the style reference)."""
    name = "14_sdxl_style_and_composition"
    prompt, apply = _advanced(name)
    both = saved_picture(sdxl_server, prompt)
    others = {
        "the composition module (style transfer)": with_inputs(prompt, {apply: {"weight_type": "style transfer"}}),
        "the composition reference": with_inputs(prompt, {apply: {"composition_embeds": None}}),
    }
    assert_differs(both, {label: saved_picture(sdxl_server, other) for label, other in others.items()}, name)
