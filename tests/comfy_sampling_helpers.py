"""Running tiny ComfyUI models through the real sampler, and calling one layer's attn2 patch directly."""

import torch

from decoupled_ipadapter.ipadapter_core.unet.patch import host_attention

LATENT_SIZE = 8
TEXT_TOKENS = 77


def text_conditioning(seed: int, width: int):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, TEXT_TOKENS, width, generator=generator), {}]]


def sample(model, *, cfg: float, steps: int = 2, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """KSampler's path (comfy.sample.sample, euler/normal) with the same noise in every batch row."""
    import comfy.sample

    width = model.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn2.to_k.weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, LATENT_SIZE, LATENT_SIZE, generator=generator).repeat(batch, 1, 1, 1)  # [B, 4, h, w]
    latent = torch.zeros_like(noise)
    return comfy.sample.sample(
        model, noise, steps, cfg, "euler", "normal",
        text_conditioning(1, width), text_conditioning(2, width), latent,
        seed=seed, disable_pbar=True,
    )  # fmt: skip


def replace_patch(model, key):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {}).get(key)


def attn2_of(model, key):
    block_name, block_id, index = key
    blocks = {"input": model.model.diffusion_model.input_blocks, "output": model.model.diffusion_model.output_blocks}
    block = model.model.diffusion_model.middle_block if block_name == "middle" else blocks[block_name][block_id]
    transformer = next(module for module in block if hasattr(module, "transformer_blocks"))
    return transformer.transformer_blocks[index].attn2


def layer_inputs(model, key, *, seed: int = 0):
    """Projected q/k/v and extra_options as BasicTransformerBlock hands them to an attn2 replace patch (cfg batch)."""
    attn2 = attn2_of(model, key)
    hidden = attn2.to_k.weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 64, hidden, generator=generator)  # [B, Nq, H·D]
    k = torch.randn(2, TEXT_TOKENS, hidden, generator=generator)  # [B, 77, H·D]
    v = torch.randn(2, TEXT_TOKENS, hidden, generator=generator)
    options = {
        "n_heads": attn2.heads,
        "dim_head": hidden // attn2.heads,
        "attn_precision": None,
        "cond_or_uncond": [1, 0],
        "sigmas": torch.ones(2),
        "block": key[:2],
        "block_index": key[2],
    }
    return q, k, v, options


def call_patch(patch, q, k, v, options) -> torch.Tensor:
    with torch.no_grad():
        return (patch or host_attention)(q, k, v, options)
