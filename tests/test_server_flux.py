"""Flux on a real ComfyUI server (`main.py --cpu`): the XLabs IP-Adapter through the HTTP API and the front-end.

The models are stand-ins (devkit/standins.py, group "flux"; random values, generated once, then cached): a
FLUX.1-shaped transformer as `flux1-dev.safetensors` (FLUX.1's widths, 2 double and 1 single block, CLIP-L-wide
text input) that ComfyUI's own detection loads as Flux through Load Diffusion Model, the XLabs-format adapter of
its width and blocks, CLIP ViT-L/14, a CLIP-L text encoder and the 16-channel VAE, at 64x64 and 2 steps.
workflows/16_flux_xlabs.json runs as the stand-ins can run it (workflow_checks.on_standins: CLIP-L alone instead of
T5-XXL + CLIP-L). Checks: the workflow validates and runs through /prompt and from the editor; λ = 0 gives exactly
the latent of the graph without our nodes and λ = 0.7 another one; an SD1.5 adapter on the Flux model fails with
the message that names both, and the server runs the next prompt.
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
from workflow_checks import FLUX_WORKFLOW

pytestmark = pytest.mark.server

SD15_ADAPTER = "ip-adapter_sd15.safetensors"  # the demo group's stand-ins
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


@pytest.fixture(scope="module")
def flux_server():
    with comfy_server(models_dir=standin_models(groups=("demo", "flux"))) as server:
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
