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
import torch
from browser import frontend_page, playwright_driver
from safetensors.torch import load_file
from server_harness import comfy_server, prompt_error, run_prompt, standin_models
from test_workflows import upload_inputs, validate_and_run
from test_workflows_browser import check_in_the_editor
from workflow_checks import FLUX_WORKFLOW, api_workflow, on_standins, shrunk

pytestmark = pytest.mark.server

SD15_ADAPTER = "ip-adapter_sd15.safetensors"  # the demo group's stand-ins
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


@pytest.fixture(scope="module")
def flux_server():
    with comfy_server(models_dir=standin_models(groups=("demo", "flux"))) as server:
        upload_inputs(server)
        yield server


def node_of(prompt: dict, class_type: str) -> tuple[str, dict]:
    (found,) = [(key, node) for key, node in prompt.items() if node["class_type"] == class_type]
    return found


def latent_prompt(*, weight: float | None, adapter: str | None = None, encoder: str | None = None,
                  seed: int = 42) -> dict:  # fmt: skip
    """The Flux workflow on the stand-ins, saving the sampled latent (SaveLatent) instead of decoding it. `weight`
    None: the sampler takes the diffusion model straight from Load Diffusion Model (no pack node runs)."""
    prompt = on_standins(shrunk(api_workflow(FLUX_WORKFLOW)))
    sampler_id, sampler = node_of(prompt, "KSampler")
    sampler["inputs"]["seed"] = seed
    _, apply = node_of(prompt, "DecoupledIPAdapterApply")
    if weight is None:
        sampler["inputs"]["model"] = apply["inputs"]["model"]
    else:
        apply["inputs"]["weight"] = weight
    if adapter is not None:
        node_of(prompt, "DecoupledIPAdapterLoader")[1]["inputs"]["ipadapter_name"] = adapter
    if encoder is not None:
        node_of(prompt, "CLIPVisionLoader")[1]["inputs"]["clip_name"] = encoder
    for class_type in ("SaveImage", "VAEDecode"):
        del prompt[node_of(prompt, class_type)[0]]
    prompt["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": "flux_test"}}
    return prompt


def saved_latent(server, prompt: dict) -> torch.Tensor:
    entry = run_prompt(server, prompt)
    (saved,) = entry["outputs"]["900"]["latents"]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def test_flux_workflow_validates_and_runs_as_a_flux_model(flux_server):
    validate_and_run(flux_server, FLUX_WORKFLOW)
    # ComfyUI names the model class it built from the file: model_base.Flux, found by its own detection.
    assert "Requested to load Flux\n" in flux_server.log(), flux_server.log_tail()


def test_flux_workflow_opens_in_the_editor_and_runs_from_it(flux_server):
    with playwright_driver() as playwright, frontend_page(playwright, flux_server.url) as page:
        check_in_the_editor(flux_server, page, FLUX_WORKFLOW)


def test_lambda_zero_is_the_plain_model_and_lambda_changes_the_latent(flux_server):
    plain = saved_latent(flux_server, latent_prompt(weight=None))
    at_zero = saved_latent(flux_server, latent_prompt(weight=0.0))
    guided = saved_latent(flux_server, latent_prompt(weight=0.7))
    assert plain.shape == (1, 16, 8, 8) and torch.isfinite(plain).all()
    assert torch.equal(at_zero, plain)
    change = (guided - plain).abs().max().item()
    assert change > 1e-3 * plain.abs().max().item(), change


def test_an_sd15_adapter_on_flux_is_refused_and_the_next_prompt_runs(flux_server):
    message = prompt_error(flux_server, latent_prompt(weight=0.7, adapter=SD15_ADAPTER, encoder=VIT_H))
    expected = f"Apply IPAdapter: '{SD15_ADAPTER}' is an SD1.5 IP-Adapter but it was applied to a Flux model"
    assert expected in message, message
    latent = saved_latent(flux_server, latent_prompt(weight=0.7, seed=43))
    assert latent.shape == (1, 16, 8, 8) and torch.isfinite(latent).all()
