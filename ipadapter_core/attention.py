"""The decoupled cross-attention of IP-Adapter, as pure tensor functions.

    out = Attn(Q, K_text, V_text) + Σ_terms Attn(Q, K', λ·V')      (= λ · Attn(Q, K', V'): λ folded into V')

computed before `to_out`, with the host layer's heads and softmax scale; each term (one Apply node) has its own
softmax. `attention(q, k, v)` is one of ComfyUI's attention functions (see unet/patch.py), called in the heads
layout `[B, H, N, D]` (its skip_reshape / skip_output_reshape mode). With an attention mask a term adds
`Attn(Q, K', λ·V') · mask` instead.
"""

from collections.abc import Callable, Sequence

import torch

from .errors import IPAdapterError

COND, UNCOND = 0, 1  # index of the image-prompt tokens and of the unconditional tokens in a `[2, T, W]` pair

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rows_for_batch(by_side: torch.Tensor, sides: Sequence[int], rows: int) -> torch.Tensor:
    """Give every batch row the image-prompt or the unconditional tokens of its chunk.

    `by_side` is `[2, T, W]` (COND, UNCOND); the batch is `len(sides)` equal chunks, `sides[i]` naming the tokens of
    chunk i. Returns `[rows, T, W]` (expanded views, concatenated), with no index tensor and no device sync.
    """
    chunk = chunk_rows(rows, sides)
    if len(set(sides)) == 1:
        return by_side[sides[0]].expand(rows, -1, -1)  # [rows, T, W]
    return torch.cat([by_side[side].expand(chunk, -1, -1) for side in sides])  # [rows, T, W]


def chunk_rows(rows: int, sides: Sequence[int]) -> int:
    """The rows of each of the `len(sides)` equal chunks of a batch of `rows` rows (refused if they do not split)."""
    if rows % len(sides):
        raise IPAdapterError(
            f"Apply IPAdapter: a cross-attention call has {rows} batch rows, which do not split into the "
            f"{len(sides)} conditioning chunks ComfyUI names for it (transformer_options 'cond_or_uncond'). A node "
            "between the sampler and the model changed the batch without updating cond_or_uncond: remove that "
            "node, or give it a batch that is a multiple of the chunks."
        )
    return rows // len(sides)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`[B, N, H·D]` -> `[B, H, N, D]` (a view)."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)  # [B, H, N, D]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`[B, H, N, D]` -> `[B, N, H·D]`."""
    batch, heads, tokens, dim_head = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim_head)  # [B, N, H·D]


def image_prompt_attention(
    q_heads: torch.Tensor,
    image_keys: torch.Tensor,
    image_values: torch.Tensor,
    sides: Sequence[int],
    attention: Attention,
) -> torch.Tensor:
    """`Attn(Q, K', V')` for a batch whose chunks get the tokens `sides` names, in the heads layout (so all terms of
    a layer share one split of Q). q_heads: `[B, H, Nq, D]`; K'/V': `[2, T, H·D]`; returns `[B, H, Nq, D]`."""
    batch, heads = q_heads.shape[:2]
    keys = split_heads(rows_for_batch(image_keys, sides, batch), heads)  # [B, H, T, D]
    values = split_heads(rows_for_batch(image_values, sides, batch), heads)  # [B, H, T, D]
    return attention(q_heads, keys, values)  # [B, H, Nq, D]


def masked_image_prompt_attention(
    q_heads: torch.Tensor,
    image_keys: torch.Tensor,
    image_values: torch.Tensor,
    sides: Sequence[int],
    attention: Attention,
    *,
    masks: torch.Tensor,
) -> torch.Tensor:
    """`Σ_i Attn(Q, K'_i, V'_i) · mask_i` in the heads layout, masks `[M, Nq, 1]`. With one mask per image (M > 1)
    every image has its own softmax, as in diffusers' `ip_adapter_masks`; with one mask the images share one."""
    if masks.shape[0] == 1:
        return image_prompt_attention(q_heads, image_keys, image_values, sides, attention) * masks[0]  # [B, H, Nq, D]
    tokens = image_keys.shape[1] // masks.shape[0]  # per image
    total = None
    for index, mask in enumerate(masks):
        one_image = slice(index * tokens, (index + 1) * tokens)
        out = image_prompt_attention(q_heads, image_keys[:, one_image], image_values[:, one_image], sides, attention) * mask
        total = out if total is None else total.add_(out)
    return total  # [B, H, Nq, D]


def row_image_prompt_attention(
    q_heads: torch.Tensor,
    row_keys: torch.Tensor,
    row_values: torch.Tensor,
    attention: Attention,
    *,
    masks: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """`Attn(Q, K'_b, V'_b)` with K'/V' given per batch row b (`[B, T, H·D]`), in the heads layout. With `masks` (each
    `[B or 1, Nq, 1]`) the tokens split into `len(masks)` equal slices, one per mask: `Σ_m Attn(Q, K'_m, V'_m) ·
    mask_m`, each slice its own softmax. Returns `[B, H, Nq, D]`."""
    heads = q_heads.shape[1]
    if not masks:
        return attention(q_heads, split_heads(row_keys, heads), split_heads(row_values, heads))  # [B, H, Nq, D]
    tokens = row_keys.shape[1] // len(masks)  # per slice
    total = None
    for index, mask in enumerate(masks):
        one_slice = slice(index * tokens, (index + 1) * tokens)
        keys = split_heads(row_keys[:, one_slice], heads)  # [B, H, T/M, D]
        values = split_heads(row_values[:, one_slice], heads)  # [B, H, T/M, D]
        out = attention(q_heads, keys, values) * mask.unsqueeze(1)  # [B, H, Nq, D] · [B or 1, 1, Nq, 1]
        total = out if total is None else total.add_(out)
    return total  # [B, H, Nq, D]
