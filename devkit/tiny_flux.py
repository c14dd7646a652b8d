"""A tiny Flux with the real block layout, its diffusers twin, and random XLabs Flux IP-Adapter files.

The transformer keeps FLUX.1's widths where the adapter meets it (head dim 128 with the real RoPE axes 16/56/56,
T5 width 4096 for the text and the adapter's tokens, CLIP ViT-L width 768 for the pooled vector, 16 latent
channels, patch 2, MLP ratio 4, QKV bias, guidance embedding) but only 2 heads and a few double and single blocks.
"""

import torch
from tiny_models import fill_random_

FLUX_TEXT_WIDTH = 4096
FLUX_POOLED_WIDTH = 768
FLUX_HEAD_DIM = 128


def tiny_flux_config(*, double_blocks: int = 2, single_blocks: int = 2, heads: int = 2) -> dict:
    return dict(
        image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=FLUX_POOLED_WIDTH,
        context_in_dim=FLUX_TEXT_WIDTH, hidden_size=heads * FLUX_HEAD_DIM, mlp_ratio=4.0, num_heads=heads,
        depth=double_blocks, depth_single_blocks=single_blocks, axes_dim=[16, 56, 56], theta=10000,
        qkv_bias=True, guidance_embed=True,
    )  # fmt: skip


def flux_model_config(config: dict):
    """ComfyUI's Flux model config (comfy.supported_models.Flux) for Flux parameters `config`."""
    import dataclasses

    import comfy.supported_models
    from comfy.ldm.flux.model import FluxParams

    unet_config = dict(config)
    if "txt_ids_dims" in {field.name for field in dataclasses.fields(FluxParams)}:
        unet_config["txt_ids_dims"] = []  # newer hosts: FLUX.1 has no text position ids (as their detection sets)
    return comfy.supported_models.Flux(unet_config)


def tiny_flux_model(config: dict, *, seed: int = 0):
    """A ComfyUI ModelPatcher over a tiny Flux (fp32, CPU), built by ComfyUI's own Flux model config."""
    import comfy.model_patcher

    model_config = flux_model_config(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    fill_random_(model.diffusion_model, seed=seed)
    model.diffusion_model.to(torch.float32)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def flux_diffusers_twin(comfy_patcher, config: dict):
    """diffusers' FluxTransformer2DModel with the same weights, converted by ComfyUI's own map (flux_to_diffusers)."""
    import comfy.utils
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=config["in_channels"] * 4, num_layers=config["depth"],
        num_single_layers=config["depth_single_blocks"], attention_head_dim=FLUX_HEAD_DIM,
        num_attention_heads=config["num_heads"], joint_attention_dim=FLUX_TEXT_WIDTH,
        pooled_projection_dim=FLUX_POOLED_WIDTH, guidance_embeds=True, axes_dims_rope=tuple(config["axes_dim"]),
    ).eval()  # fmt: skip
    load_converted_weights(transformer, comfy_patcher.model.diffusion_model, comfy.utils.flux_to_diffusers(config))
    return transformer


def load_converted_weights(transformer, comfy_module, key_map: dict) -> None:
    """Give a diffusers model a ComfyUI model's weights through one of ComfyUI's own key maps
    (`comfy.utils.*_to_diffusers`: diffusers key -> ComfyUI key, slice of a fused tensor, or (key, None, function))."""
    comfy_weights = comfy_module.state_dict()
    wanted = set(transformer.state_dict())
    weights = {}
    for diffusers_key, target in key_map.items():
        if diffusers_key not in wanted or (target if isinstance(target, str) else target[0]) not in comfy_weights:
            continue  # keys of variants these models do not have (ControlNet input; Flux 2 names on newer hosts)
        if isinstance(target, str):
            weights[diffusers_key] = comfy_weights[target]
        elif target[1] is None:  # (key, None, function): a function that is its own inverse (swap_scale_shift)
            weights[diffusers_key] = target[2](comfy_weights[target[0]])
        else:  # (key, (dim, offset, size)): a slice of a fused tensor (qkv, linear1)
            dim, offset, size = target[1]
            weights[diffusers_key] = comfy_weights[target[0]].narrow(dim, offset, size)
    missing, unexpected = transformer.load_state_dict(weights, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])


def xlabs_adapter_state_dict(*, hidden_size: int, double_blocks: int, seed: int, num_tokens: int = 4, dtype=torch.float32):
    """A random XLabs Flux IP-Adapter in the official key format, from the pack's own module (so diffusers'
    loader, which renames the official keys, also checks our names)."""
    from decoupled_ipadapter.models.flux_adapter import FluxIPAdapterModel

    model = FluxIPAdapterModel(
        embedding_dim=FLUX_POOLED_WIDTH, context_dim=FLUX_TEXT_WIDTH, num_tokens=num_tokens,
        hidden_size=hidden_size, double_blocks=double_blocks,
    )  # fmt: skip
    fill_random_(model, seed=seed)
    return {key: value.to(dtype).contiguous() for key, value in model.state_dict().items()}


SIGLIP_WIDTH = 1152


def instantx_adapter_parts(*, hidden_size: int, layers: int, seed: int, num_tokens: int = 4, inner_dim: int = 64) -> dict:
    """A random InstantX FLUX.1-dev IP-Adapter as `ip-adapter.bin` nests it (`{"image_proj": …, "ip_adapter": …}`),
    from the pack's own module: SigLIP's width 1152 and the T5 width 4096 as in the official file, a small inner
    width and token count."""
    from decoupled_ipadapter.models.instantx_flux_adapter import InstantXFluxAdapterModel

    model = InstantXFluxAdapterModel(
        embedding_dim=SIGLIP_WIDTH, inner_dim=inner_dim, token_dim=FLUX_TEXT_WIDTH, num_tokens=num_tokens,
        hidden_size=hidden_size, head_dim=FLUX_HEAD_DIM, layers=layers,
    )  # fmt: skip
    fill_random_(model, seed=seed)
    parts: dict = {"image_proj": {}, "ip_adapter": {}}
    for key, value in model.state_dict().items():
        part, _, rest = key.partition(".")
        parts[part][rest] = value.contiguous()
    return parts
