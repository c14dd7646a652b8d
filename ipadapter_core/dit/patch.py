"""The Flux double-block replace patch that runs the XLabs IP-Adapter inside ComfyUI's samplers.

What diffusers' `FluxIPAdapterAttnProcessor` computes in double block i, image stream only:

    ip_query = norm_q(q of the modulated image tokens)     # after the QK-norm, before RoPE: [B, H, L, D]
    ip       = Σ_adapters Attn(ip_query, K', λ·V')     # = λ · Attn(ip_query, K', V'); K' = to_k_ip(tokens), V' = to_v_ip(tokens)
    img_out  = block(img, txt, …).img + ip                 # at the very end of the block: ungated, no to_out

ComfyUI calls `patches_replace["dit"][("double_block", i)](args, {"original_block": …})` on every host. The query is
the one the block itself computes: a forward hook on the block's QK-norm (`img_attn.norm`, whose first output is the
normalised image query on both hosts) keeps it while the block runs, so the image stream's qkv projection is not
computed a second time. Where the norm does not run exactly once in the call (another pack's patch, set on the block
and kept in place of the original block, may compute the block its own way), the query is rebuilt from a copy of
the block's input with the block's own modules (the block adds to `img` in place).

`to`, `models` and `__deepcopy__` are ComfyUI's patch protocol (patch_protocol.py).
"""

from dataclasses import dataclass

import torch

from ..attention import rows_for_batch, split_heads
from ..patch_protocol import TermsPatch
from ..term import ImagePromptTerm
from ..unet.passes import call_sigma, chunk_sides


@dataclass(frozen=True)
class DoubleBlock:
    """What an ImagePromptTerm needs to know of a double block: its number in the adapter file (K'/V' per block)
    and the key its per-block weight is found under."""

    number: int

    @property
    def key(self) -> tuple[str, int]:
        return ("double_block", self.number)


def flux_image_query(block: torch.nn.Module, img: torch.Tensor, vec) -> torch.Tensor:
    """The image stream's query after the QK-norm, as ComfyUI's DoubleStreamBlock computes it: `[B, H, L, D]`."""
    from comfy.ldm.flux.layers import apply_mod

    if block.modulation:
        image_modulation, _ = block.img_mod(vec)
    else:
        (image_modulation, _), _ = vec
    modulated = apply_mod(block.img_norm1(img), 1 + image_modulation.scale, image_modulation.shift)  # [B, L, C]
    qkv = block.img_attn.qkv(modulated)  # [B, L, 3·H·D]
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)  # 3 × [B, H, L, D]
    q, _ = block.img_attn.norm(q, k, v)
    return q


def ip_attention(query: torch.Tensor, image_keys: torch.Tensor, image_values: torch.Tensor, transformer_options) -> torch.Tensor:
    """`Attn(query, K', V')` with ComfyUI's optimized attention. query `[B, H, L, D]`, K'/V' `[B, T, H·D]` -> `[B, L, H·D]`."""
    from comfy.ldm.modules.attention import optimized_attention

    heads = query.shape[1]
    keys = split_heads(image_keys, heads)  # [B, H, T, D]
    values = split_heads(image_values, heads)  # [B, H, T, D]
    return optimized_attention(query, keys, values, heads, skip_reshape=True, transformer_options=transformer_options)


class DoubleBlockPatch(TermsPatch):
    def __init__(self, *, index: int, block: torch.nn.Module, terms: tuple[ImagePromptTerm, ...], base=None):
        self.index = index
        self.block = block  # the model's own DoubleStreamBlock i (shared, never copied)
        self.terms = terms
        self.base = base  # another pack's replace patch on this block, or None for the original block

    def run_block(self, args, extra):
        return self.base(args, extra) if self.base is not None else extra["original_block"](args)

    def run_block_keeping_query(self, args, extra):
        """The block's output and the image query its QK-norm computed (`[B, H, L, D]`)."""
        block_input = args["img"].clone()  # [B, L, C]: the block adds to args["img"] in place
        queries = []
        handle = self.block.img_attn.norm.register_forward_hook(lambda module, inputs, output: queries.append(output[0]))
        try:
            out = self.run_block(args, extra)
        finally:
            handle.remove()
        if len(queries) == 1:
            return out, queries[0]
        return out, flux_image_query(self.block, block_input, args["vec"])

    def __call__(self, args, extra):
        options = args.get("transformer_options") or {}
        sigma = call_sigma(options)
        block = DoubleBlock(number=self.index)
        active = [term for term in self.terms if term.acts_at(block, sigma)]  # one decision per call, no device sync
        if not active:
            return self.run_block(args, extra)
        out, query = self.run_block_keeping_query(args, extra)
        sides = chunk_sides(options)
        image = out["img"]
        for term in active:
            image_keys, image_values = term.keys_values(block, query.device, query.dtype)  # K', λ·V': [2, T, H·D] each
            keys = rows_for_batch(image_keys, sides, query.shape[0])  # [B, T, H·D]
            values = rows_for_batch(image_values, sides, query.shape[0])  # [B, T, H·D]
            image = image + ip_attention(query, keys, values, options).to(image.dtype)
        return {**out, "img": image}

    def stacked_with(self, term: ImagePromptTerm) -> "DoubleBlockPatch":
        return DoubleBlockPatch(index=self.index, block=self.block, terms=(*self.terms, term), base=self.base)
