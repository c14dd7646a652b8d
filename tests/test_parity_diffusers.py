"""Parity with diffusers' IP-Adapter (the numerical oracle) on the same weights, through ComfyUI's real UNet.

Tiny UNets with the SD1.5 layout (16 cross-attention layers) and the SDXL layout (70; depths 2 and 10), the same
weights in ComfyUI's and diffusers' layouts, one random adapter file in the official format per projection type,
λ in {0, 0.5, 1}, a batch of [unconditional, conditional] rows. Tolerance: fp32, |Δ| <= 2e-5 · max|output|.
"""


import pytest
import torch
from safetensors.torch import save_file
from tiny_models import (
    SD15_TEXT_WIDTH,
    SDXL_TEXT_WIDTH,
    adapter_state_dict,
    diffusers_twin,
    layer_hidden_sizes,
    nested,
    tiny_comfy_model,
)

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.memory import manage

RELATIVE_TOLERANCE = 2e-5
TEXT_WIDTH = {"SD1.5": SD15_TEXT_WIDTH, "SDXL": SDXL_TEXT_WIDTH}
CLIP_OUTPUT = {"linear": "image_embeds", "mlp": "penultimate_hidden_states", "resampler": "penultimate_hidden_states"}
PARITY_ERRORS: list[tuple[str, float]] = []  # printed at the end of the run by conftest


def clip_like(projection: str, images: int, generator) -> torch.Tensor:
    if projection == "linear":
        return torch.randn(images, 1024, generator=generator)  # ViT-H image embeds
    return torch.randn(images, 257, 1280, generator=generator)  # ViT-H penultimate hidden states


def comfy_forward(model, x, t, text, cond_or_uncond):
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=cond_or_uncond, sigmas=torch.ones(x.shape[0]))
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps=t, context=text, transformer_options=options)


def diffusers_forward(unet, x, t, text, image_embeds, scale):
    for processor in unet.attn_processors.values():
        if hasattr(processor, "scale"):
            processor.scale = [scale]
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [image_embeds]}).sample


@pytest.mark.parametrize("layout", ["SD1.5", "SDXL"])
@pytest.mark.parametrize("projection", ["linear", "mlp", "resampler"])
def test_decoupled_attention_matches_diffusers(comfy_host, tmp_path, layout, projection):
    generator = torch.Generator().manual_seed(7)
    model = tiny_comfy_model(layout, seed=1)
    reference = diffusers_twin(model, layout)
    flat = adapter_state_dict(projection, hidden_sizes=layer_hidden_sizes(model), text_width=TEXT_WIDTH[layout], seed=2)
    path = tmp_path / f"ip-adapter-{projection}.safetensors"
    save_file(flat, str(path))
    adapter = load_adapter(str(path))
    weights = manage(adapter).weights_patcher
    reference._load_ip_adapter_weights([nested(flat)], low_cpu_mem_usage=False)

    images = 2  # two reference images: one prompt, tokens concatenated (one softmax), as diffusers does
    positive, negative = clip_like(projection, images, generator), clip_like(projection, 1, generator)
    embeds = make_embeds(positive, negative, clip_output=CLIP_OUTPUT[projection])
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([400.0, 400.0])
    text = torch.randn(2, 77, TEXT_WIDTH[layout], generator=generator)
    # diffusers rows: [unconditional, conditional]; each row [n_images, …] of its own tokens
    image_rows = torch.stack([embeds.negative, embeds.positive])  # [2, n, E] or [2, n, S, E]

    plain = comfy_forward(model, x, t, text, [1, 0])
    for scale in (0.0, 0.5, 1.0):
        patched = apply_image_prompt(model, adapter, weights, embeds, weight=scale, start_at=0.0, end_at=1.0)
        ours = comfy_forward(patched, x, t, text, [1, 0])
        theirs = diffusers_forward(reference, x, t, text, image_rows, scale)
        error = (ours - theirs).abs().max().item()
        PARITY_ERRORS.append((f"{layout} {projection} λ={scale}", error))
        assert error <= RELATIVE_TOLERANCE * theirs.abs().max().item(), f"|Δ| = {error}"
        if scale == 0.0:
            assert torch.equal(ours, plain), "λ = 0 must give exactly the unpatched output"
        else:
            assert (ours - plain).abs().max() > 1e-3, "the image prompt must change the output"



def test_stacked_adapters_match_diffusers_multi_adapter(comfy_host, tmp_path):
    """Two Apply nodes (base + plus) = diffusers with two adapters loaded, scales [0.5, 1.0]."""
    generator = torch.Generator().manual_seed(11)
    model = tiny_comfy_model("SD1.5", seed=4)
    reference = diffusers_twin(model, "SD1.5")
    scales, flats, rows = [], [], []
    patched = model
    for seed, (projection, scale) in enumerate((("linear", 0.5), ("resampler", 1.0)), start=20):
        flat = adapter_state_dict(projection, hidden_sizes=layer_hidden_sizes(model), text_width=SD15_TEXT_WIDTH, seed=seed)
        path = tmp_path / f"{projection}.safetensors"
        save_file(flat, str(path))
        adapter = load_adapter(str(path))
        embeds = make_embeds(clip_like(projection, 1, generator), clip_like(projection, 1, generator), clip_output=CLIP_OUTPUT[projection])
        patched = apply_image_prompt(
            patched, adapter, manage(adapter).weights_patcher, embeds, weight=scale, start_at=0.0, end_at=1.0
        )
        flats.append(nested(flat))
        rows.append(torch.stack([embeds.negative, embeds.positive]))  # [2, 1, …]
        scales.append(scale)
    reference._load_ip_adapter_weights(flats, low_cpu_mem_usage=False)
    for processor in reference.attn_processors.values():
        if hasattr(processor, "scale"):
            processor.scale = scales
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([600.0, 600.0])
    text = torch.randn(2, 77, SD15_TEXT_WIDTH, generator=generator)
    ours = comfy_forward(patched, x, t, text, [1, 0])
    with torch.no_grad():
        theirs = reference(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": rows}).sample
    error = (ours - theirs).abs().max().item()
    PARITY_ERRORS.append(("SD1.5 stacked linear+resampler", error))
    assert error <= RELATIVE_TOLERANCE * theirs.abs().max().item(), f"|Δ| = {error}"
