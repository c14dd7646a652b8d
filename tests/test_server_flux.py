"""Flux on a real ComfyUI server (`main.py --cpu`): the XLabs and InstantX IP-Adapters through the HTTP API and the
front-end.

The models are stand-ins (devkit/standins.py, group "flux"; random values, generated once, then cached): a
FLUX.1-shaped transformer as `flux1-dev.safetensors` (FLUX.1's widths, 2 double and 1 single block, CLIP-L-wide
text input) that ComfyUI's own detection loads as Flux through Load Diffusion Model, the XLabs-format adapter of
its width and blocks, CLIP ViT-L/14, a CLIP-L text encoder and the 16-channel VAE, at 64x64 and 2 steps.
workflows/16_flux_xlabs.json runs as the stand-ins can run it (workflow_checks.on_standins: CLIP-L alone instead of
T5-XXL + CLIP-L). Checks: the workflow validates and runs through /prompt and from the editor; λ = 0 gives exactly
the latent of the graph without our nodes and λ = 0.7 another one; an SD1.5 adapter on the Flux model fails with
the message that names both, and the server runs the next prompt. workflows/22_flux_instantx.json (the InstantX
adapter of the stand-in's width and 2 + 1 blocks, a full-size SigLIP so400m with its pooling head): the same checks,
and the SD3.5 adapter (the sd3 group's) and Comfy-Org's SigLIP file without the head (refused when queued) are
refused with their messages, each followed by a prompt that runs.
"""

import pytest
from browser import frontend_page, playwright_driver
from server_harness import comfy_server, prompt_error, standin_models
from test_workflows import (
    check_lambda_zero_is_plain_and_weight_acts,
    check_refused_then_next_runs,
    upload_inputs,
    validate_and_run,
)
from test_workflows_browser import check_in_the_editor
from workflow_checks import FLUX_INSTANTX_WORKFLOW, FLUX_WORKFLOW, latent_prompt

pytestmark = pytest.mark.server

SD15_ADAPTER = "ip-adapter_sd15.safetensors"  # the demo group's stand-ins
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
SD35_ADAPTER = "ip-adapter.bin"  # the sd3 group's
HEADLESS_SIGLIP = "sigclip_vision_patch14_384.safetensors"  # the sd3 group's, as Comfy-Org ships it: no pooling head


@pytest.fixture(scope="module")
def flux_server():
    with comfy_server(models_dir=standin_models(groups=("demo", "flux", "sd3"))) as server:
        upload_inputs(server)
        yield server


def test_flux_workflow_validates_and_runs_as_a_flux_model(flux_server):
    validate_and_run(flux_server, FLUX_WORKFLOW)
    # ComfyUI names the model class it built from the file: model_base.Flux, found by its own detection.
    assert "Requested to load Flux\n" in flux_server.log(), flux_server.log_tail()


@pytest.mark.frontend
def test_flux_workflow_opens_in_the_editor_and_runs_from_it(flux_server):
    with playwright_driver() as playwright, frontend_page(playwright, flux_server.url) as page:
        check_in_the_editor(flux_server, page, FLUX_WORKFLOW)


def test_lambda_zero_is_the_plain_model_and_lambda_changes_the_latent(flux_server):
    check_lambda_zero_is_plain_and_weight_acts(flux_server, FLUX_WORKFLOW, weight=0.7)


def test_an_sd15_adapter_on_flux_is_refused_and_the_next_prompt_runs(flux_server):
    expected = f"Apply IPAdapter: '{SD15_ADAPTER}' is an SD1.5 IP-Adapter but it was applied to a Flux model"
    check_refused_then_next_runs(flux_server, FLUX_WORKFLOW, expected=expected, weight=0.7, adapter=SD15_ADAPTER,
                                 encoder=VIT_H)  # fmt: skip


def test_instantx_workflow_validates_and_runs(flux_server):
    validate_and_run(flux_server, FLUX_INSTANTX_WORKFLOW)


@pytest.mark.frontend
def test_instantx_workflow_opens_in_the_editor_and_runs_from_it(flux_server):
    with playwright_driver() as playwright, frontend_page(playwright, flux_server.url) as page:
        check_in_the_editor(flux_server, page, FLUX_INSTANTX_WORKFLOW)


def test_instantx_lambda_zero_is_the_plain_model_and_lambda_changes_the_latent(flux_server):
    check_lambda_zero_is_plain_and_weight_acts(flux_server, FLUX_INSTANTX_WORKFLOW, weight=0.6)


def test_instantx_workflow_refuses_an_sd35_adapter_and_a_siglip_file_without_its_head(flux_server):
    """The headless SigLIP file is refused when the prompt is queued (Load SigLIP Vision (pooled) reads the file's
    header), the SD3.5 adapter when Apply runs; then the workflow as written runs (another seed)."""
    message = prompt_error(flux_server, latent_prompt(FLUX_INSTANTX_WORKFLOW, weight=0.6, encoder=HEADLESS_SIGLIP))
    assert message.startswith("ComfyUI rejected the prompt"), message  # at queue time, before any node runs
    assert (f"'{HEADLESS_SIGLIP}' has no SigLIP attention-pooling head (vision_model.head.*), whose pooled output the "
            "InstantX FLUX.1-dev IP-Adapter reads") in message, message  # fmt: skip
    expected = (f"Apply IPAdapter: '{SD35_ADAPTER}' is an SD3.5 IP-Adapter but it was applied to a model that is not SD3 "
                "(no MMDiT joint blocks)")  # fmt: skip
    check_refused_then_next_runs(flux_server, FLUX_INSTANTX_WORKFLOW, expected=expected, weight=0.6, adapter=SD35_ADAPTER)
