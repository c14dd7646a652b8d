"""Which ComfyUI attn2 patch key each `ip_adapter.N` layer of a checkpoint belongs to.

`N` is the position of the attention processor in diffusers' `unet.attn_processors`: modules in registration
order, which is down blocks, then up blocks, then the middle block last; attn1 before attn2 in every transformer
block, so cross-attention layers are the odd N. In ComfyUI's LDM layout that is: `input_blocks` in order, then
`output_blocks`, then `middle_block`, and inside each SpatialTransformer its transformer blocks in order. The patch
key is `(block_name, block_id, transformer_block_index)`, with the middle block as `("middle", 0, i)`; where a
block holds one transformer block (all of SD1.5), `(block_name, block_id)` names the same layer, the key that
cubiq's IPAdapter, InstantID and PuLID packs use on SD1.5.
"""

import collections
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CrossAttentionLayer:
    number: int  # the checkpoint's ip_adapter.N
    key: tuple[str, int, int]  # ComfyUI's attn2 replace key (block_name, block_id, transformer_block_index)
    hidden_size: int  # the layer's attention width (to_k output rows)
    context_dim: int  # the width of the text tokens it reads (to_k input)
    block_key: tuple[str, int] | None = None  # (block_name, block_id) when that block holds only this layer


def is_unet(diffusion_model: torch.nn.Module) -> bool:
    """ComfyUI's LDM UNet (SD1.x, SD2.x, SDXL): what the attn2 patch mechanism reaches."""
    return all(hasattr(diffusion_model, name) for name in ("input_blocks", "middle_block", "output_blocks"))


def transformer_blocks_in_order(diffusion_model: torch.nn.Module):
    """Every transformer block of a ComfyUI UNet in diffusers' processor order: `(key, path, block)` with the attn2
    patch key and the block's module path in the UNet (`input_blocks.1.1.transformer_blocks.0`). The i-th block's
    attn1 is the checkpoints' processor 2i, its attn2 2i + 1."""
    ordered_blocks = [
        *(("input", index, f"input_blocks.{index}", block) for index, block in enumerate(diffusion_model.input_blocks)),
        *(("output", index, f"output_blocks.{index}", block) for index, block in enumerate(diffusion_model.output_blocks)),
        ("middle", 0, "middle_block", diffusion_model.middle_block),
    ]
    for block_name, block_id, block_path, block in ordered_blocks:
        for position, module in enumerate(block):
            for index, transformer_block in enumerate(getattr(module, "transformer_blocks", ())):
                yield (block_name, block_id, index), f"{block_path}.{position}.transformer_blocks.{index}", transformer_block


def cross_attention_layers(diffusion_model: torch.nn.Module) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of a ComfyUI UNet, numbered as IP-Adapter checkpoints number them."""
    return [layer for layer, _ in cross_attention_modules(diffusion_model)]


def cross_attention_modules(diffusion_model: torch.nn.Module) -> list[tuple[CrossAttentionLayer, torch.nn.Module]]:
    """Every cross-attention layer of a ComfyUI UNet with its attn2 module, in checkpoint order."""
    found = [
        (key, block.attn2) for key, _, block in transformer_blocks_in_order(diffusion_model) if getattr(block, "attn2", None) is not None
    ]  # (key, attn2) in checkpoint order
    layers_per_block = collections.Counter(key[:2] for key, _ in found)
    layers = []
    for key, attn2 in found:
        hidden_size, context_dim = attn2.to_k.weight.shape
        layer = CrossAttentionLayer(
            number=2 * len(layers) + 1,
            key=key,
            hidden_size=hidden_size,
            context_dim=context_dim,
            block_key=key[:2] if layers_per_block[key[:2]] == 1 else None,
        )
        layers.append((layer, attn2))
    return layers
