"""A tiny SD3 (MMDiT) with the real joint-block layout, its diffusers twin, and random InstantX SD3.5 IP-Adapter
files.

The transformer keeps SD3.5 Large's widths where the adapter meets it (head width 64, RMS QK-norm, T5 width 4096
for the text, CLIP-L+G pooled width 2048, 16 latent channels, patch 2) but only 3 heads and 3 joint blocks (ComfyUI's
MMDiT has as many heads as blocks). The adapter keeps SigLIP's width 1152 and the real 320-wide timestep sinusoid,
with a small resampler (width 128, 2 heads of 64, 8 queries; the real depth 4, which diffusers does not read from the file).
"""

import torch
from tiny_flux import load_converted_weights
from tiny_models import fill_random_

SD3_TEXT_WIDTH = 4096
SD3_POOLED_WIDTH = 2048
SD3_HEAD_DIM = 64
SIGLIP_WIDTH = 1152
TIMESTEP_DIM = 320
TINY_RESAMPLER = dict(resampler_dim=128, resampler_depth=4, resampler_heads=2, num_tokens=8)  # depth 4: diffusers assumes it
INSTANTX_RESAMPLER = dict(resampler_dim=1280, resampler_depth=4, resampler_heads=20, num_tokens=64)  # the official file's
POS_EMBED_MAX_SIZE = 8


def tiny_sd3_config(*, blocks: int = 3) -> dict:
    hidden = blocks * SD3_HEAD_DIM
    return dict(
        in_channels=16, out_channels=16, patch_size=2, depth=blocks, input_size=None, adm_in_channels=SD3_POOLED_WIDTH,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": SD3_TEXT_WIDTH, "out_features": hidden}},
        num_patches=POS_EMBED_MAX_SIZE**2, pos_embed_max_size=POS_EMBED_MAX_SIZE, qk_norm="rms",
        pos_embed_scaling_factor=None, x_block_self_attn_layers=[],
    )  # fmt: skip


def tiny_sd3_model(config: dict, *, seed: int = 0):
    """A ComfyUI ModelPatcher over a tiny SD3 (fp32, CPU), built by ComfyUI's own SD3 model config."""
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SD3(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    fill_random_(model.diffusion_model, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a buffer ComfyUI leaves uninitialised (the checkpoint holds it)
        model.diffusion_model.pos_embed.copy_(0.1 * torch.randn(model.diffusion_model.pos_embed.shape, generator=generator))
    model.diffusion_model.to(torch.float32)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def sd3_diffusers_twin(comfy_patcher, config: dict):
    """diffusers' SD3Transformer2DModel with the same weights, converted by ComfyUI's own map (mmdit_to_diffusers)."""
    import comfy.utils
    from diffusers import SD3Transformer2DModel

    blocks = config["depth"]
    transformer = SD3Transformer2DModel(
        sample_size=POS_EMBED_MAX_SIZE, patch_size=2, in_channels=16, num_layers=blocks, attention_head_dim=SD3_HEAD_DIM,
        num_attention_heads=blocks, joint_attention_dim=SD3_TEXT_WIDTH, caption_projection_dim=blocks * SD3_HEAD_DIM,
        pooled_projection_dim=SD3_POOLED_WIDTH, out_channels=16, pos_embed_max_size=POS_EMBED_MAX_SIZE,
        qk_norm="rms_norm", dual_attention_layers=(),
    ).eval()  # fmt: skip
    load_converted_weights(transformer, comfy_patcher.model.diffusion_model, comfy.utils.mmdit_to_diffusers(config))
    return transformer


def instantx_adapter_state_dict(
    *, hidden_size: int, joint_blocks: int, seed: int, dtype=torch.float32, resampler: dict = TINY_RESAMPLER
) -> dict[str, torch.Tensor]:
    """A random InstantX SD3.5 IP-Adapter in the official key format (flat `image_proj.*` / `ip_adapter.*`), from
    the pack's own module (so diffusers' loader, which renames the official resampler keys, also checks our names)."""
    from decoupled_ipadapter.models.sd3_adapter import SD3IPAdapterModel

    model = SD3IPAdapterModel(
        embedding_dim=SIGLIP_WIDTH, timestep_dim=TIMESTEP_DIM, hidden_size=hidden_size, head_dim=SD3_HEAD_DIM,
        joint_blocks=joint_blocks, **resampler,
    )  # fmt: skip
    fill_random_(model, seed=seed)
    return {key: value.to(dtype).contiguous() for key, value in model.state_dict().items()}

