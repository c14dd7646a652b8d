"""Flux's double and single blocks computed from their own modules, with image-prompt terms added inside the
attention (the InstantX FLUX.1-dev IP-Adapter's point), as InstantX's `IPAFluxAttnProcessor2_0` adds them:

    ip = Σ_terms Attn(q, K', λ·V')     # q: the block's own query after its QK-norm, before RoPE: [B, H, L, D]
                                       # K' = RMS-norm per head (to_k_ip(tokens)), V' = to_v_ip(tokens)
    double block i:  img_attn += ip   (the image stream's attention output, before img_attn.proj and the gate: the
                                       block's MLP sees it)
    single block j:  attn += ip       (the whole attention output, text and image tokens, before linear2)

Every other operation is the block's own, in ComfyUI's order (`DoubleStreamBlock.forward`,
`SingleStreamBlock.forward`), with its modules (so its weights, weight patches and casts) and ComfyUI's Flux
attention (`comfy.ldm.flux.math.attention`: RoPE, then optimized attention). The block's variants are read from the
block: `modulation` False (the modulation comes in `vec`), `flipped_img_txt` (image tokens first), and the single
block's `mlp_hidden_dim_first` (a SiLU-gated MLP). ComfyUI's dit replace patch passes no modulation_dims.
"""

import torch

from ..attention import rows_for_batch, split_heads
from ..guider_sides import chunk_sides
from ..term import DitBlock


def ip_attention(query: torch.Tensor, image_keys: torch.Tensor, image_values: torch.Tensor, transformer_options) -> torch.Tensor:
    """`Attn(query, K', V')` with ComfyUI's optimized attention. query `[B, H, L, D]`, K'/V' `[B, T, H·D]` -> `[B, L, H·D]`."""
    from comfy.ldm.modules.attention import optimized_attention

    heads = query.shape[1]
    keys = split_heads(image_keys, heads)  # [B, H, T, D]
    values = split_heads(image_values, heads)  # [B, H, T, D]
    return optimized_attention(query, keys, values, heads, skip_reshape=True, transformer_options=transformer_options)


def add_image_prompt(out: torch.Tensor, terms, layer: DitBlock, query: torch.Tensor, options: dict) -> torch.Tensor:
    """`out` `[B, L, H·D]` + Σ_terms Attn(query, K', λ·V'), each batch row with the image tokens of its side."""
    sides = chunk_sides(options)
    for term in terms:
        image_keys, image_values = term.keys_values(layer, query.device, query.dtype)  # K', λ·V': [2, T, H·D] each
        keys = rows_for_batch(image_keys, sides, query.shape[0])  # [B, T, H·D]
        values = rows_for_batch(image_values, sides, query.shape[0])  # [B, T, H·D]
        out = out + ip_attention(query, keys, values, options).to(out.dtype)
    return out


def _stream_qkv(norm, attention, x, mod, heads: int):
    """One stream's normed query and key and its value, `[B, H, L, D]` each (the block's own steps)."""
    from comfy.ldm.flux.layers import apply_mod

    qkv = attention.qkv(apply_mod(norm(x), (1 + mod.scale), mod.shift, None))  # [B, L, 3·H·D]
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, L, D] each
    q, k = attention.norm(q, k, v)
    return q, k, v


def _mlp_update(x, attn, proj, norm2, mlp, mod1, mod2):
    """The block's gated attention projection, then its gated MLP, added to the stream `x` `[B, L, C]`."""
    from comfy.ldm.flux.layers import apply_mod

    x = x + apply_mod(proj(attn), mod1.gate, None, None)
    return x + apply_mod(mlp(apply_mod(norm2(x), (1 + mod2.scale), mod2.shift, None)), mod2.gate, None, None)


def double_block_with_image_prompt(block, args: dict, terms, layer: DitBlock) -> tuple[dict, torch.Tensor]:
    """`DoubleStreamBlock.forward` with the terms added to the image attention output; also the image query."""
    from comfy.ldm.flux.math import attention

    img, txt, vec = args["img"], args["txt"], args["vec"]
    options = args.get("transformer_options") or {}
    if getattr(block, "modulation", True):
        (img_mod1, img_mod2), (txt_mod1, txt_mod2) = block.img_mod(vec), block.txt_mod(vec)
    else:
        (img_mod1, img_mod2), (txt_mod1, txt_mod2) = vec
    img_qkv = _stream_qkv(block.img_norm1, block.img_attn, img, img_mod1, block.num_heads)
    txt_qkv = _stream_qkv(block.txt_norm1, block.txt_attn, txt, txt_mod1, block.num_heads)
    image_first = getattr(block, "flipped_img_txt", False)
    first, second = (img_qkv, txt_qkv) if image_first else (txt_qkv, img_qkv)
    q, k, v = (torch.cat((first[index], second[index]), dim=2) for index in range(3))  # [B, H, L + L', D]
    attn = attention(q, k, v, pe=args["pe"], mask=args.get("attn_mask"), transformer_options=options)  # [B, L + L', H·D]
    split = img.shape[1] if image_first else txt.shape[1]
    img_attn, txt_attn = (attn[:, :split], attn[:, split:]) if image_first else (attn[:, split:], attn[:, :split])
    img_attn = add_image_prompt(img_attn, terms, layer, img_qkv[0], options)
    img = _mlp_update(img, img_attn, block.img_attn.proj, block.img_norm2, block.img_mlp, img_mod1, img_mod2)
    txt = _mlp_update(txt, txt_attn, block.txt_attn.proj, block.txt_norm2, block.txt_mlp, txt_mod1, txt_mod2)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return {"img": img, "txt": txt}, img_qkv[0]


def single_block_with_image_prompt(block, args: dict, terms, layer: DitBlock) -> dict:
    """`SingleStreamBlock.forward` with the terms added to the whole attention output, before linear2."""
    from comfy.ldm.flux.layers import apply_mod
    from comfy.ldm.flux.math import attention

    x, vec = args["img"], args["vec"]
    options = args.get("transformer_options") or {}
    mod = block.modulation(vec)[0] if block.modulation is not None else vec
    mlp_width = getattr(block, "mlp_hidden_dim_first", block.mlp_hidden_dim)
    qkv, mlp = torch.split(
        block.linear1(apply_mod(block.pre_norm(x), (1 + mod.scale), mod.shift, None)), [3 * block.hidden_size, mlp_width], dim=-1
    )  # [B, L, 3·H·D], [B, L, M]
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, L, D] each
    q, k = block.norm(q, k, v)
    attn = attention(q, k, v, pe=args["pe"], mask=args.get("attn_mask"), transformer_options=options)  # [B, L, H·D]
    attn = add_image_prompt(attn, terms, layer, q, options)
    x = x + apply_mod(block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2)), mod.gate, None, None)
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return {"img": x}
