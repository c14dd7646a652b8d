"""SD3.5 on a real ComfyUI server (`main.py --cpu`): the InstantX IP-Adapter through the HTTP API and the front-end.

The models are stand-ins (devkit/standins.py, group "sd3"; random values, generated once, then cached): an MMDiT
checkpoint as `sd3.5_large.safetensors` (3 joint blocks of width 192 with SD3.5's text, pooled and latent widths, and
the 16-channel VAE) that ComfyUI's own detection loads as SD3 through Load Checkpoint, the InstantX-format adapter of
its width and blocks as `ip-adapter.bin` (read as weights only), a full-size SigLIP so400m and a CLIP-L text encoder,
at 64x64 and 2 steps. workflows/17_sd35_instantx.json runs as the stand-ins can run it (workflow_checks.on_standins:
CLIP-L alone instead of TripleCLIPLoader's three encoders). Checks: the workflow validates and runs through /prompt
and from the editor; λ = 0 gives exactly the latent of the graph without our nodes and λ = 0.5 another one; an SD1.5
adapter on the SD3 model, and ViT-H for the InstantX adapter, fail with messages that name what to load, and the
server runs the next prompt.
"""

import pytest
from browser import frontend_page, playwright_driver
from server_harness import comfy_server, standin_models
from test_workflows import (
    check_lambda_zero_is_plain_and_weight_acts,
    check_refused_then_next_runs,
    upload_inputs,
    validate_and_run,
)
from test_workflows_browser import check_in_the_editor
from workflow_checks import SD3_WORKFLOW

pytestmark = pytest.mark.server

SD15_ADAPTER = "ip-adapter_sd15.safetensors"  # the demo group's stand-ins
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
SD3_ADAPTER = "ip-adapter.bin"


@pytest.fixture(scope="module")
def sd3_server():
    with comfy_server(models_dir=standin_models(groups=("demo", "flux", "sd3"))) as server:
        upload_inputs(server)
        yield server


def test_sd3_workflow_validates_and_runs_as_an_sd3_model(sd3_server):
    validate_and_run(sd3_server, SD3_WORKFLOW)
    # ComfyUI names the model class it built from the checkpoint: model_base.SD3, found by its own detection.
    assert "Requested to load SD3\n" in sd3_server.log(), sd3_server.log_tail()


@pytest.mark.frontend
def test_sd3_workflow_opens_in_the_editor_and_runs_from_it(sd3_server):
    with playwright_driver() as playwright, frontend_page(playwright, sd3_server.url) as page:
        check_in_the_editor(sd3_server, page, SD3_WORKFLOW)


def test_lambda_zero_is_the_plain_model_and_lambda_changes_the_latent(sd3_server):
    check_lambda_zero_is_plain_and_weight_acts(sd3_server, SD3_WORKFLOW, weight=0.5)


def test_an_sd15_adapter_on_sd3_is_refused_and_the_next_prompt_runs(sd3_server):
    expected = f"Apply IPAdapter: '{SD15_ADAPTER}' is an SD1.5 IP-Adapter but it was applied to an SD3 model"
    check_refused_then_next_runs(sd3_server, SD3_WORKFLOW, expected=expected, weight=0.5, adapter=SD15_ADAPTER,
                                 encoder=VIT_H)  # fmt: skip


def test_the_instantx_adapter_with_vit_h_is_refused_with_the_siglip_file(sd3_server):
    expected = (f"IPAdapter Encode Image: '{SD3_ADAPTER}' (instantx-sd3.5-large-ip-adapter) needs the SigLIP so400m image "
                "encoder (hidden states of width 1152), but the connected vision model is CLIP ViT-H. Load "
                "sigclip_vision_patch14_384.safetensors")  # fmt: skip
    check_refused_then_next_runs(sd3_server, SD3_WORKFLOW, expected=expected, weight=0.5, encoder=VIT_H)
