"""Small stand-ins with the real layer layouts, and random adapter files in the official format.

- Tiny ComfyUI UNets with exactly SD1.5's 16 and SDXL's 70 cross-attention layers (SDXL: transformer depths 2 and
  10), small channel counts, but the real text widths (768 / 2048), so real adapter formats and detection apply.
- The same weights in diffusers' layout, for the numerical oracle.
- Adapter state dicts in the official key format: every projection type, for any layer widths.
"""

import math

import torch

SD15_TEXT_WIDTH = 768
SDXL_TEXT_WIDTH = 2048

TINY_SD15_COMFY = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, model_channels=32, num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 2, 2], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=SD15_TEXT_WIDTH,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    use_temporal_attention=False, use_temporal_resblock=False,
)  # fmt: skip
TINY_SD15_DIFFUSERS = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64, 64),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=SD15_TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32,
)  # fmt: skip
TINY_SDXL_COMFY = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, model_channels=32, num_res_blocks=[2, 2, 2],
    transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 2], transformer_depth_middle=10,
    use_linear_in_transformer=True, context_dim=SDXL_TEXT_WIDTH,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    use_temporal_attention=False, use_temporal_resblock=False,
)  # fmt: skip
TINY_SDXL_DIFFUSERS = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(2, 4, 4), use_linear_projection=True,
    cross_attention_dim=SDXL_TEXT_WIDTH, norm_num_groups=32,
)  # fmt: skip

# Attention widths of the real models' cross-attention layers, in checkpoint order (ip_adapter.1, .3, …).
SD15_HIDDEN_SIZES = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280)
SDXL_HIDDEN_SIZES = (640,) * 4 + (1280,) * 20 + (1280,) * 30 + (640,) * 6 + (1280,) * 10


def random_parameter(name: str, shape, *, generator: torch.Generator) -> torch.Tensor:
    """One random tensor for the parameter `name`: fan-in-scaled normal matrices, norm weights near 1 (LayerNorm,
    GroupNorm, and OpenCLIP-named `.ln_` layers), small vectors: finite activations through random nets."""
    values = torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        return values / math.sqrt(math.prod(shape[1:]))
    if ("norm" in name or ".ln_" in name) and name.endswith("weight"):
        return 1.0 + 0.1 * values
    return 0.1 * values


def fill_random_(module: torch.nn.Module, *, seed: int) -> torch.nn.Module:
    """Every parameter of `module` by `random_parameter`, from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(random_parameter(name, parameter.shape, generator=generator))
    return module


def tiny_comfy_model(layout: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, prediction: str = "eps"):
    """A ComfyUI ModelPatcher over a tiny UNet with the real SD1.5 or SDXL cross-attention layout (CPU; fp32, or the
    UNet dtype ComfyUI runs with --force-fp16 / --bf16-unet: the same random values, rounded); `prediction`: "eps"
    (SD1.5's, SDXL's) or "v" (SD2's 768-v models')."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    model_type = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}[prediction]

    class TinySD15(comfy.supported_models.SD15):
        def model_type(self, state_dict, prefix=""):
            return model_type

    class TinySDXLLayout(comfy.supported_models.SD15):
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

    config_class, unet_config = {"SD1.5": (TinySD15, TINY_SD15_COMFY), "SDXL": (TinySDXLLayout, TINY_SDXL_COMFY)}[layout]
    model_config = config_class(dict(unet_config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    fill_random_(model.diffusion_model, seed=seed)
    model.diffusion_model.to(dtype)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def diffusers_twin(comfy_patcher, layout: str):
    """The diffusers UNet2DConditionModel with the same weights as a tiny ComfyUI UNet."""
    import comfy.utils
    from diffusers import UNet2DConditionModel

    comfy_config, diffusers_config = {
        "SD1.5": (TINY_SD15_COMFY, TINY_SD15_DIFFUSERS),
        "SDXL": (TINY_SDXL_COMFY, TINY_SDXL_DIFFUSERS),
    }[layout]
    unet = UNet2DConditionModel(**diffusers_config).eval()
    comfy_weights = comfy_patcher.model.diffusion_model.state_dict()
    key_map = comfy.utils.unet_to_diffusers(dict(comfy_config))
    weights = {diffusers_key: comfy_weights[ldm_key] for diffusers_key, ldm_key in key_map.items() if ldm_key in comfy_weights}
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    return unet


def adapter_state_dict(
    projection: str,
    *,
    hidden_sizes,
    text_width: int,
    seed: int,
    embedding_dim: int | None = None,
    dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """A random adapter in the flat official format (`image_proj.*`, `ip_adapter.N.to_{k,v}_ip.weight`).

    projection: "linear" (ip-adapter_*), "mlp" (full-face) or "resampler" (plus). The image projection comes from
    the pack's own modules, so a diffusers load of this state dict also checks our key names.
    """
    from decoupled_ipadapter.models.adapter import IPAdapterModel
    from decoupled_ipadapter.models.image_projection import LinearProjection, MLPProjection, Resampler

    if projection == "linear":
        image_proj = LinearProjection(embedding_dim=embedding_dim or 1024, cross_attention_dim=text_width, num_tokens=4)
    elif projection == "mlp":
        image_proj = MLPProjection(embedding_dim=embedding_dim or 1280, cross_attention_dim=text_width)
    else:
        dim = 768 if text_width == SD15_TEXT_WIDTH else 1280
        image_proj = Resampler(
            dim=dim, depth=4, dim_head=64, heads=dim // 64, num_queries=16,
            embedding_dim=embedding_dim or 1280, output_dim=text_width, ff_mult=4,
        )  # fmt: skip
    model = IPAdapterModel(
        image_proj=image_proj,
        cross_attention_dim=text_width,
        hidden_sizes={2 * index + 1: hidden for index, hidden in enumerate(hidden_sizes)},
    )
    fill_random_(model, seed=seed)
    return {key: value.to(dtype).contiguous() for key, value in model.state_dict().items()}


def nested(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The `.bin` layout of a flat state dict."""
    parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        parts[part][rest] = value
    return parts


def layer_hidden_sizes(comfy_patcher) -> tuple[int, ...]:
    from decoupled_ipadapter.ipadapter_core.unet.layer_map import cross_attention_layers

    return tuple(layer.hidden_size for layer in cross_attention_layers(comfy_patcher.model.diffusion_model))


def faceid_adapter_state_dict(
    kind: str, *, hidden_sizes, text_width: int, seed: int, lora_rank: int = 8, lora: bool = True
) -> dict[str, torch.Tensor]:
    """A random IP-Adapter FaceID file in the official nested `.bin` layout: kind "faceid" (4 tokens), "portrait"
    (16 tokens) or "plus" (perceiver over ViT-H hidden states), and with `lora` the UNet LoRA of every attention
    layer (`N.to_{q,k,v,out}_lora.{down,up}.weight`: attn1 of cross-attention layer 2k+1 is 2k, its text width the
    layer's own)."""
    from decoupled_ipadapter.models.adapter import IPAdapterModel
    from decoupled_ipadapter.models.faceid_projection import FaceIDPlusProjection, FaceIDProjection

    if kind == "plus":
        perceiver = dict(dim=text_width, depth=4, dim_head=64, heads=text_width // 64, embedding_dim=1280, output_dim=text_width, ff_mult=4)
        image_proj = FaceIDPlusProjection(cross_attention_dim=text_width, num_tokens=4, perceiver=perceiver, shortcut=False)
    else:
        image_proj = FaceIDProjection(cross_attention_dim=text_width, num_tokens=16 if kind == "portrait" else 4)
    model = IPAdapterModel(
        image_proj=image_proj,
        cross_attention_dim=text_width,
        hidden_sizes={2 * index + 1: hidden for index, hidden in enumerate(hidden_sizes)},
    )
    fill_random_(model, seed=seed)
    parts = nested(model.state_dict())
    if lora:
        generator = torch.Generator().manual_seed(seed + 1)
        for index, hidden in enumerate(hidden_sizes):
            for number, context in ((2 * index, hidden), (2 * index + 1, text_width)):
                for name, width_in in (("q", hidden), ("k", context), ("v", context), ("out", hidden)):
                    down = torch.randn(lora_rank, width_in, generator=generator) / math.sqrt(width_in)
                    up = torch.randn(hidden, lora_rank, generator=generator) / math.sqrt(lora_rank) * 0.3
                    parts["ip_adapter"][f"{number}.to_{name}_lora.down.weight"] = down
                    parts["ip_adapter"][f"{number}.to_{name}_lora.up.weight"] = up
    return {part: {key: value.contiguous() for key, value in tensors.items()} for part, tensors in parts.items()}
