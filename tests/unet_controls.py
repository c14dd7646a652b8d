"""Oracles for the per-layer controls (block weights, weight types), on the tiny SD1.5 and SDXL UNets.

- `runtime_transformer_indexes`: the transformer index and block ComfyUI itself passes to each layer's attn2 patch
  (`extra_options["transformer_index"]`, `["block"]`) in a real forward pass: the index cubiq's types are keyed by.
- `diffusers_layer_scales`: what diffusers' own `set_ip_adapter_scale` sets on every IP-Adapter processor of the
  diffusers twin, keyed by ComfyUI's attn2 patch key through ComfyUI's own diffusers key map.
"""

import functools
import re
import types
from dataclasses import dataclass

import torch
from tiny_models import (
    SD15_TEXT_WIDTH,
    SDXL_TEXT_WIDTH,
    TINY_SD15_COMFY,
    TINY_SDXL_COMFY,
    adapter_state_dict,
    diffusers_twin,
    layer_hidden_sizes,
    nested,
    tiny_comfy_model,
)

from decoupled_ipadapter.ipadapter_core.unet.blocks import TransformerModule, unet_transformer_modules
from decoupled_ipadapter.ipadapter_core.unet.layer_map import cross_attention_layers

TEXT_WIDTH = {"SD1.5": SD15_TEXT_WIDTH, "SDXL": SDXL_TEXT_WIDTH}
LDM_KEY = re.compile(r"(input|middle|output)_blocks?\.(?:(\d+)\.)?1\.transformer_blocks\.(\d+)\.")


@dataclass
class TinyUNet:
    layout: str
    model: object  # ComfyUI ModelPatcher
    modules: tuple[TransformerModule, ...]
    runtime: dict  # layer key → (transformer_index, block) as ComfyUI passed them
    diffusers_unet: object  # with IP-Adapter processors loaded
    comfy_key_of_processor: dict  # diffusers attn2 processor name → ComfyUI layer key


def runtime_transformer_indexes(model, layout: str) -> dict:
    import comfy.ldm.modules.attention

    seen = {}

    def recorder(key):
        def patch(q, k, v, extra_options):
            seen[key] = (extra_options["transformer_index"], tuple(extra_options["block"]))
            return comfy.ldm.modules.attention.optimized_attention(q, k, v, extra_options["n_heads"])

        return patch

    patched = model.clone()
    for layer in cross_attention_layers(model.model.diffusion_model):
        block_name, block_id, index = layer.key
        patched.set_model_attn2_replace(recorder(layer.key), block_name, block_id, index)
    x = torch.randn(1, 4, 16, 16)
    text = torch.randn(1, 77, TEXT_WIDTH[layout])
    options = dict(patched.model_options["transformer_options"], cond_or_uncond=[0], sigmas=torch.ones(1))
    with torch.no_grad():
        patched.model.diffusion_model(x, timesteps=torch.tensor([500.0]), context=text, transformer_options=options)
    return seen


def comfy_keys_of_processors(unet, layout: str) -> dict:
    """diffusers `…attn2.processor` name → ComfyUI attn2 key, read from `comfy.utils.unet_to_diffusers`."""
    import comfy.utils

    ldm_of = comfy.utils.unet_to_diffusers(dict({"SD1.5": TINY_SD15_COMFY, "SDXL": TINY_SDXL_COMFY}[layout]))
    keys = {}
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        ldm = ldm_of[name.removesuffix("processor") + "to_k.weight"]  # e.g. input_blocks.8.1.transformer_blocks.3.…
        block_name, block_id, index = LDM_KEY.match(ldm).groups()
        keys[name] = (block_name, int(block_id or 0), int(index))
    return keys


@functools.cache  # one per layout for the whole run: the test files share them
def tiny_unet(layout: str) -> TinyUNet:
    model = tiny_comfy_model(layout, seed=3)
    unet = diffusers_twin(model, layout)
    flat = adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(model), text_width=TEXT_WIDTH[layout], seed=4)
    unet._load_ip_adapter_weights([nested(flat)], low_cpu_mem_usage=False)
    return TinyUNet(
        layout=layout,
        model=model,
        modules=unet_transformer_modules(model.model.diffusion_model),
        runtime=runtime_transformer_indexes(model, layout),
        diffusers_unet=unet,
        comfy_key_of_processor=comfy_keys_of_processors(unet, layout),
    )


def diffusers_layer_scales(tiny: TinyUNet, scale) -> dict:
    """ComfyUI layer key → the scale diffusers' `set_ip_adapter_scale(scale)` gives that layer's IP processor."""
    from diffusers.loaders.ip_adapter import IPAdapterMixin

    processors = tiny.diffusers_unet.attn_processors
    for name in tiny.comfy_key_of_processor:
        processors[name].scale = [float("nan")]  # a processor that set_ip_adapter_scale leaves alone stays NaN
    IPAdapterMixin.set_ip_adapter_scale(types.SimpleNamespace(unet=tiny.diffusers_unet), scale)
    return {key: processors[name].scale[0] for name, key in tiny.comfy_key_of_processor.items()}
