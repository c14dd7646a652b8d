"""The Flux double-block replace patch that runs the XLabs IP-Adapter inside ComfyUI's samplers.

What diffusers' `FluxIPAdapterAttnProcessor` computes in double block i, image stream only:

    ip_query = norm_q(q of the modulated image tokens)     # after the QK-norm, before RoPE: [B, H, L, D]
    ip       = Σ_adapters Attn(ip_query, K', λ·V')     # = λ · Attn(ip_query, K', V'); K' = to_k_ip(tokens), V' = to_v_ip(tokens)
    img_out  = block(img, txt, …).img + ip                 # at the very end of the block: ungated, no to_out

ComfyUI calls `patches_replace["dit"][("double_block", i)](args, {"original_block": …})` on every host. The query is
the one the block itself computes: a forward hook on the block's QK-norm (`img_attn.norm`, whose first output is the
normalised image query on both hosts) keeps it while our patch runs the block, so the image stream's qkv projection
is not computed a second time and the block's input is not copied. The hook is put on the norm once, when the first
patch for that block is made, and stays there (it keeps nothing outside our calls): no hook is registered or
removed per call, which would break a TorchCompileModel graph at every call. Where another pack's patch on the block
runs in place of the original block (it may run the block twice, or compute it its own way), the query is computed
from the block's input before that patch runs, with the block's own modules (the block adds to `img` in place).

`to`, `models` and `__deepcopy__` are ComfyUI's patch protocol (patch_protocol.py).
"""

from dataclasses import dataclass

import torch

from ..attention import rows_for_batch, split_heads
from ..errors import IPAdapterError
from ..patch_protocol import TermsPatch
from ..term import ImagePromptTerm
from ..guider_sides import call_sigma, chunk_sides


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


class QueryKeeper:
    """The forward hook on a double block's QK-norm: while `queries` is a list, each call's query is appended."""

    def __init__(self):
        self.queries: list | None = None

    def __call__(self, module, inputs, output):
        if self.queries is not None:
            self.queries.append(output[0])  # [B, H, L, D]


QUERY_KEEPER = "decoupled_ipadapter_query_keeper"  # the norm module's attribute holding its QueryKeeper


def query_keeper(norm: torch.nn.Module) -> QueryKeeper:
    """The QueryKeeper hooked on `norm`, hooked there on the first request (one hook per module, ever)."""
    keeper = getattr(norm, QUERY_KEEPER, None)
    if keeper is None:
        keeper = QueryKeeper()
        norm.register_forward_hook(keeper)
        setattr(norm, QUERY_KEEPER, keeper)
    return keeper


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
        query_keeper(block.img_attn.norm)  # hooked now, outside any sampling (and compiled) call

    def run_block(self, args, extra):
        return self.base(args, extra) if self.base is not None else extra["original_block"](args)

    def run_block_keeping_query(self, args, extra):
        """The block's output and its image query after the QK-norm (`[B, H, L, D]`)."""
        if self.base is not None:
            query = flux_image_query(self.block, args["img"], args["vec"])  # before the block changes args["img"]
            return self.run_block(args, extra), query
        keeper = query_keeper(self.block.img_attn.norm)
        keeper.queries = []
        try:
            out = extra["original_block"](args)
        finally:
            queries, keeper.queries = keeper.queries, None
        if len(queries) != 1:
            raise IPAdapterError(
                f"Apply IPAdapter: Flux double block {self.index} ran its QK-norm {len(queries)} times in one call "
                "(once is ComfyUI's block). A patch on the block's modules changed how it runs; remove it or apply "
                "the IP-Adapter without it."
            )
        return out, queries[0]

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
