"""Running tiny ComfyUI models through the real samplers (KSampler's path and SamplerCustomAdvanced with any guider),
calling one layer's attn2 patch directly, and the random adapters and embeds the sampling tests apply."""

import torch
from tiny_models import adapter_state_dict, layer_hidden_sizes, nested

from decoupled_ipadapter.ipadapter_core.adapter import LoadedAdapter, build_adapter_model
from decoupled_ipadapter.ipadapter_core.unet.format import detect_spec
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.memory import manage
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.unet.layer_map import cross_attention_layers
from decoupled_ipadapter.ipadapter_core.unet.patch import host_attention

LATENT_SIZE = 8
TEXT_TOKENS = 77


def linear_adapter(model, *, seed: int):
    """A random base adapter (ViT-H image embeds) for `model`'s layer widths, under ComfyUI's memory management."""
    flat = adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(model), text_width=text_width(model), seed=seed)
    parts = nested(flat)
    name = f"ip-adapter-{seed}.safetensors"
    spec = detect_spec(parts, name)
    return manage(LoadedAdapter(spec=spec, model=build_adapter_model(spec, parts, "test"), source=name))


def image_embeds(seed: int, images: int = 1):
    """Random ViT-H image embeds of `images` reference images, with the base adapters' zero negative."""
    generator = torch.Generator().manual_seed(seed)
    return make_embeds(torch.randn(images, 1024, generator=generator), torch.zeros(1, 1024), clip_output="image_embeds")


def unconditional_only(embeds):
    """The same embeds with the negative in the image's place: every pass then gets the unconditional tokens."""
    return make_embeds(embeds.negative, embeds.negative, clip_output=embeds.clip_output)


def apply(model, managed, embeds, *, weight=1.0, start_at=0.0, end_at=1.0):
    return apply_image_prompt(
        model, managed.adapter, managed.weights_patcher, embeds, weight=weight, start_at=start_at, end_at=end_at
    )


def close(a: torch.Tensor, b: torch.Tensor, *, relative: float = 1e-5) -> bool:
    return (a - b).abs().max().item() <= relative * b.abs().max().item()


def text_width(model) -> int:
    return cross_attention_layers(model.model.diffusion_model)[0].context_dim


def text_conditioning(seed: int, width: int):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, TEXT_TOKENS, width, generator=generator), {}]]


def sample(model, *, cfg: float, steps: int = 2, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """KSampler's path (comfy.sample.sample, euler/normal) with the same noise in every batch row."""
    import comfy.sample

    width = text_width(model)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, LATENT_SIZE, LATENT_SIZE, generator=generator).repeat(batch, 1, 1, 1)  # [B, 4, h, w]
    latent = torch.zeros_like(noise)
    return comfy.sample.sample(
        model, noise, steps, cfg, "euler", "normal",
        text_conditioning(1, width), text_conditioning(2, width), latent,
        seed=seed, disable_pbar=True,
    )  # fmt: skip


def custom_sample(guider, *, steps: int = 2, seed: int = 0, scheduler: str = "normal", sampler=None) -> torch.Tensor:
    """SamplerCustomAdvanced (ComfyUI's node, called in-process) with `guider`: euler unless `sampler` is given."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise, SamplerCustomAdvanced

    model_sampling = guider.model_patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)
    latent = {"samples": torch.zeros(1, 4, LATENT_SIZE, LATENT_SIZE)}  # [1, 4, h, w]
    output = SamplerCustomAdvanced.execute(
        noise=Noise_RandomNoise(seed), guider=guider, sampler=sampler or comfy.samplers.sampler_object("euler"),
        sigmas=sigmas, latent_image=latent,
    )  # fmt: skip
    return output.result[0]["samples"]


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
