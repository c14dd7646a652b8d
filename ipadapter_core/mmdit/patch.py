"""The MMDiT (SD3) joint-block replace patch that runs the InstantX SD3.5 IP-Adapter inside ComfyUI's samplers.

What diffusers' `SD3IPAdapterJointAttnProcessor2_0` computes in joint block i, image stream only:

    q, k, v  = the image stream's projections, before the block's own QK-norm           # [B, H, L, D]
    K', V'   = to_k_ip / to_v_ip (norm_ip(tokens, timestep embedding))               # [B, H, T, D]
    ip       = Attn(norm_q(q), [norm_k(k); norm_ip_k(K')], [v; V'])                  # [B, L, H·D]
    x_attn  += Σ_adapters λ · ip                       # the image part of the joint attention, before the block's
                                                       # output projection, gated residual and MLP

The term enters inside the block, so the patch computes the block itself, with the block's own modules and the
same operations as ComfyUI's `_block_mixing` (only the image stream's query/key/value are also kept before their
QK-norm). ComfyUI calls `patches_replace["dit"][("double_block", i)](args, {"original_block": …})` on every host.
A patch another pack set on the block first is kept: it is called with our image-prompt block as its
`original_block`. Where no term acts (λ = 0, outside the step range) the original block runs unchanged.

`to`, `models` and `__deepcopy__` are ComfyUI's patch protocol (patch_protocol.py).
"""

import torch

from ..attention import rows_for_batch
from ..guider_sides import call_sigma, chunk_sides
from ..patch_protocol import TermsPatch
from ..term import DitBlock
from .term import TimestepImagePromptTerm


def image_stream_pre_attention(x_block: torch.nn.Module, x: torch.Tensor, c: torch.Tensor):
    """ComfyUI's `DismantledBlock.pre_attention` (a block with the 6 adaLN modulations) that also returns the
    query/key/value before the QK-norm: (q, k, v) as the block gives them, (q, k, v) raw `[B, L, H, D]`, and the
    intermediates `post_attention` needs."""
    from comfy.ldm.modules.diffusionmodules.mmdit import modulate, split_qkv

    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = x_block.adaLN_modulation(c).chunk(6, dim=1)
    attention = x_block.attn
    qkv = attention.qkv(modulate(x_block.norm1(x), shift_msa, scale_msa))  # [B, L, 3·H·D]
    q, k, v = split_qkv(qkv, attention.head_dim)  # [B, L, H, D] each
    normed_q = attention.ln_q(q).reshape(q.shape[0], q.shape[1], -1)  # [B, L, H·D]
    normed_k = attention.ln_k(k).reshape(q.shape[0], q.shape[1], -1)  # [B, L, H·D]
    return (normed_q, normed_k, v), (q, k, v), (x, gate_msa, shift_mlp, scale_mlp, gate_mlp)


def ip_attention(layer, raw_qkv, image_keys, image_values, transformer_options) -> torch.Tensor:
    """`Attn(norm_q(q), [norm_k(k); K'], [v; V'])` with ComfyUI's attention. raw q/k/v `[B, L, H, D]`, K' (already
    normed) and V' `[B, T, H·D]` -> `[B, L, H·D]`."""
    from comfy.ldm.modules.attention import optimized_attention

    q, k, v = raw_qkv
    batch, _, heads, head_dim = q.shape
    query = layer.norm_q(q).transpose(1, 2)  # [B, H, L, D]
    keys = torch.cat([layer.norm_k(k), image_keys.view(batch, -1, heads, head_dim)], dim=1).transpose(1, 2)  # [B, H, L+T, D]
    values = torch.cat([v, image_values.view(batch, -1, heads, head_dim)], dim=1).transpose(1, 2)  # [B, H, L+T, D]
    return optimized_attention(query, keys, values, heads, skip_reshape=True, transformer_options=transformer_options)


def joint_block_with_image_prompt(block, args: dict, terms: list, *, number: int, sigma: float) -> dict:
    """ComfyUI's `_block_mixing` of `block` (a JointBlock) with Σ λ·ip added to the image part of the attention."""
    from comfy.ldm.modules.attention import optimized_attention

    context, x, c = args["txt"], args["img"], args["vec"]
    options = args.get("transformer_options") or {}
    context_block, x_block = block.context_block, block.x_block
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    x_qkv, raw_qkv, x_intermediates = image_stream_pre_attention(x_block, x, c)
    qkv = [torch.cat((context_qkv[index], x_qkv[index]), dim=1) for index in range(3)]  # text tokens first
    attn = optimized_attention(qkv[0], qkv[1], qkv[2], heads=x_block.attn.num_heads, transformer_options=options)
    text_length = context_qkv[0].shape[1]
    context_attn, x_attn = attn[:, :text_length], attn[:, text_length:]  # [B, L', H·D], [B, L, H·D]
    sides = chunk_sides(options)
    block_layer = DitBlock(number=number)
    for term in terms:
        image_keys, image_values = term.keys_values(block_layer, x.device, x_attn.dtype, sigma=sigma)  # [2, T, H·D] each
        keys = rows_for_batch(image_keys, sides, x.shape[0])  # [B, T, H·D]
        values = rows_for_batch(image_values, sides, x.shape[0])  # [B, T, H·D]
        layer = term.adapter.model.layer(number)
        x_attn = x_attn + term.weight * ip_attention(layer, raw_qkv, keys, values, options).to(x_attn.dtype)
    context = None if context_block.pre_only else context_block.post_attention(context_attn, *context_intermediates)
    return {"txt": context, "img": x_block.post_attention(x_attn, *x_intermediates)}


class JointBlockPatch(TermsPatch):
    def __init__(self, *, index: int, block: torch.nn.Module, terms: tuple[TimestepImagePromptTerm, ...], base=None):
        self.index = index
        self.block = block  # the model's own JointBlock i (shared, never copied)
        self.terms = terms
        self.base = base  # another pack's replace patch on this block, or None

    def __call__(self, args, extra):
        options = args.get("transformer_options") or {}
        sigma = call_sigma(options)
        block = DitBlock(number=self.index)
        active = [term for term in self.terms if term.acts_at(block, sigma)]  # one decision per call, no sync
        if not active:
            return self.base(args, extra) if self.base is not None else extra["original_block"](args)

        def with_image_prompt(block_args):
            return joint_block_with_image_prompt(self.block, block_args, active, number=self.index, sigma=sigma)

        if self.base is not None:
            return self.base(args, {**extra, "original_block": with_image_prompt})
        return with_image_prompt(args)

    def stacked_with(self, term: TimestepImagePromptTerm) -> "JointBlockPatch":
        return JointBlockPatch(index=self.index, block=self.block, terms=(*self.terms, term), base=self.base)
