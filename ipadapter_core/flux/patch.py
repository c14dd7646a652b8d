"""The Flux block replace patches that run the XLabs and InstantX IP-Adapters inside ComfyUI's samplers.

XLabs (double blocks only):

What diffusers' `FluxIPAdapterAttnProcessor` computes in double block i, image stream only:

    ip_query = norm_q(q of the modulated image tokens)     # after the QK-norm, before RoPE: [B, H, L, D]
    ip       = Σ_adapters Attn(ip_query, K', λ·V')     # = λ · Attn(ip_query, K', V'); K' = to_k_ip(tokens), V' = to_v_ip(tokens)
    img_out  = block(img, txt, …).img + ip                 # at the very end of the block: ungated, no to_out

ComfyUI calls `patches_replace["dit"][("double_block", i)](args, {"original_block": …})` on every host. The query is
the one the block itself computes: a forward hook on the block's QK-norm (`img_attn.norm`, whose first output is the
normalised image query on both hosts) keeps it while our patch runs the block, so the image stream's qkv projection
is not computed a second time and the block's input is not copied. The hook is put on the norm once, when the first
patch for that block is made, and stays there (it keeps nothing outside our calls): no hook is registered or
removed per call, which would break a TorchCompileModel graph at every call. Another pack's patch on the block is
kept as patch_protocol.py says: it is called with our image-prompt block as its `original_block`, so each run of
the block (it may run it twice) reads its own query.

InstantX (double and single blocks): its term enters inside the block's attention, so where it acts the block is
computed from its own modules (blocks.py), and its image query is that computation's; a double block that also
holds XLabs terms adds them to that output with that query. Where no term acts (λ = 0, outside the step range) the
original block runs unchanged.

`to`, `models` and `__deepcopy__` are ComfyUI's patch protocol (patch_protocol.py).
"""

import torch

from ..errors import IPAdapterError
from ..guider_sides import call_sigma
from ..patch_protocol import TermsPatch
from ..term import DitBlock, ImagePromptTerm
from .blocks import add_image_prompt, double_block_with_image_prompt, single_block_with_image_prompt


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


class DoubleBlockPatch(TermsPatch):
    def __init__(self, *, index: int, block: torch.nn.Module, terms: tuple[ImagePromptTerm, ...], base=None):
        self.index = index
        self.block = block  # the model's own DoubleStreamBlock i (shared, never copied)
        self.terms = terms
        self.base = base  # another pack's replace patch on this block (it gets ours as its original block), or None
        query_keeper(block.img_attn.norm)  # hooked now, outside any sampling (and compiled) call

    def __call__(self, args, extra):
        sigma = call_sigma(args.get("transformer_options") or {})
        block = DitBlock(number=self.index)
        active = [term for term in self.terms if term.acts_at(block, sigma)]  # one decision per call, no device sync
        if not active:
            return self.base(args, extra) if self.base is not None else extra["original_block"](args)

        def with_image_prompt(block_args):
            return self.block_with_image_prompt(block_args, extra["original_block"], active)

        if self.base is not None:
            return self.base(args, {**extra, "original_block": with_image_prompt})
        return with_image_prompt(args)

    def block_with_image_prompt(self, args, original_block, terms: list[ImagePromptTerm]) -> dict:
        """The block with the terms that enter inside its attention (InstantX: the block computed here, from its
        modules) or else the original block, then Σ Attn(query, K', λ·V') of the other terms (XLabs) added to its
        image stream, with the image query its QK-norm computed (`[B, H, L, D]`)."""
        layer = DitBlock(number=self.index)
        inside = [term for term in terms if term.adapter.spec.adds_inside_attention]
        at_end = [term for term in terms if not term.adapter.spec.adds_inside_attention]
        if inside:
            out, query = double_block_with_image_prompt(self.block, args, inside, layer)
        else:
            out, query = self.original_block_and_query(args, original_block)
        if not at_end:
            return out
        image = add_image_prompt(out["img"], at_end, layer, query, args.get("transformer_options") or {})
        return {**out, "img": image}

    def original_block_and_query(self, args, original_block) -> tuple[dict, torch.Tensor]:
        """The original block's output, and the image query its QK-norm computed (kept by the hook)."""
        keeper = query_keeper(self.block.img_attn.norm)
        keeper.queries = []
        try:
            out = original_block(args)
        finally:
            queries, keeper.queries = keeper.queries, None
        if len(queries) != 1:
            raise IPAdapterError(
                f"Apply IPAdapter: Flux double block {self.index} ran its QK-norm {len(queries)} times in one call "
                "(once is ComfyUI's block). A patch on the block's modules changed how it runs; remove it or apply "
                "the IP-Adapter without it."
            )
        return out, queries[0]

    def stacked_with(self, term: ImagePromptTerm) -> "DoubleBlockPatch":
        return DoubleBlockPatch(index=self.index, block=self.block, terms=(*self.terms, term), base=self.base)


class SingleBlockPatch(TermsPatch):
    """The `("single_block", index)` patch of the InstantX Flux IP-Adapter (file block `number`, after the double
    blocks): where a term acts, the block computed from its modules with the terms inside its attention."""

    def __init__(self, *, index: int, number: int, block: torch.nn.Module, terms: tuple[ImagePromptTerm, ...], base=None):
        self.index = index
        self.number = number
        self.block = block  # the model's own SingleStreamBlock (shared, never copied)
        self.terms = terms
        self.base = base  # another pack's replace patch on this block (it gets ours as its original block), or None

    def __call__(self, args, extra):
        sigma = call_sigma(args.get("transformer_options") or {})
        layer = DitBlock(number=self.number, kind="single_block", index=self.index)
        active = [term for term in self.terms if term.acts_at(layer, sigma)]  # one decision per call, no device sync
        if not active:
            return self.base(args, extra) if self.base is not None else extra["original_block"](args)

        def with_image_prompt(block_args):
            return single_block_with_image_prompt(self.block, block_args, active, layer)

        if self.base is not None:
            return self.base(args, {**extra, "original_block": with_image_prompt})
        return with_image_prompt(args)

    def stacked_with(self, term: ImagePromptTerm) -> "SingleBlockPatch":
        return SingleBlockPatch(index=self.index, number=self.number, block=self.block, terms=(*self.terms, term), base=self.base)
