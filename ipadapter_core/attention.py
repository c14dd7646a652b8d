"""The decoupled cross-attention of IP-Adapter, as pure tensor functions.

    out = Attn(Q, K_text, V_text) + Σ_terms Attn(Q, K', λ·V')      (= λ · Attn(Q, K', V'): λ folded into V')

computed before `to_out`, with the host layer's heads and softmax scale; each term (one Apply node) has its own
softmax. `attention(q, k, v)` (or `attention(q, k, v, heads)`) is one of ComfyUI's attention functions (see
unet/patch.py). With an attention mask a term adds `Attn(Q, K', λ·V') · mask` instead.
"""

from collections.abc import Callable, Sequence

import torch

from .errors import IPAdapterError

COND, UNCOND = 0, 1  # index of the image-prompt tokens and of the unconditional tokens in a `[2, T, W]` pair

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
HeadsAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def rows_for_batch(by_side: torch.Tensor, sides: Sequence[int], rows: int) -> torch.Tensor:
    """Give every batch row the image-prompt or the unconditional tokens of its chunk.

    `by_side` is `[2, T, W]` (COND, UNCOND); the batch is `len(sides)` equal chunks, `sides[i]` naming the tokens of
    chunk i. Returns `[rows, T, W]` (expanded views, concatenated), with no index tensor and no device sync.
    """
    if rows % len(sides):
        raise IPAdapterError(
            f"Apply IPAdapter: a cross-attention call has {rows} batch rows, which do not split into the "
            f"{len(sides)} conditioning chunks ComfyUI names for it (transformer_options 'cond_or_uncond'). A node "
            "between the sampler and the model changed the batch without updating cond_or_uncond: remove that "
            "node, or give it a batch that is a multiple of the chunks."
        )
    chunk = rows // len(sides)
    if len(set(sides)) == 1:
        return by_side[sides[0]].expand(rows, -1, -1)  # [rows, T, W]
    return torch.cat([by_side[side].expand(chunk, -1, -1) for side in sides])  # [rows, T, W]


def image_prompt_attention(
    q: torch.Tensor,
    image_keys: torch.Tensor,
    image_values: torch.Tensor,
    sides: Sequence[int],
    attention: Attention,
) -> torch.Tensor:
    """`Attn(Q, K', V')` for a batch whose chunks get the tokens `sides` names. q: `[B, Nq, H·D]`; K'/V': `[2, T, H·D]`."""
    keys = rows_for_batch(image_keys, sides, q.shape[0])  # [B, T, H·D]
    values = rows_for_batch(image_values, sides, q.shape[0])  # [B, T, H·D]
    return attention(q, keys, values)  # [B, Nq, H·D]


def summed_image_prompt_attention(
    q: torch.Tensor,
    keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]],
    sides: Sequence[int],
    attention: HeadsAttention,
    *,
    heads: int,
) -> torch.Tensor:
    """`Σ_i Attn(Q, K'_i, V'_i)` of terms whose K'/V' have the same length, in one attention call: term i's heads
    sit beside the others' (Q repeated once per term), so each term keeps its own softmax. q: `[B, Nq, H·D]`;
    each K'_i/V'_i: `[2, T, H·D]`."""
    if len(keys_values) == 1:
        keys, values = keys_values[0]
        return image_prompt_attention(q, keys, values, sides, lambda q, k, v: attention(q, k, v, heads))
    count = len(keys_values)
    keys = torch.cat([keys for keys, _ in keys_values], dim=-1)  # [2, T, count·H·D]
    values = torch.cat([values for _, values in keys_values], dim=-1)  # [2, T, count·H·D]
    repeated = q.repeat(1, 1, count)  # [B, Nq, count·H·D]
    out = image_prompt_attention(repeated, keys, values, sides, lambda q, k, v: attention(q, k, v, heads * count))
    return out.view(q.shape[0], q.shape[1], count, q.shape[2]).sum(dim=2)  # [B, Nq, H·D]


def masked_image_prompt_attention(
    q: torch.Tensor,
    image_keys: torch.Tensor,
    image_values: torch.Tensor,
    sides: Sequence[int],
    attention: Attention,
    *,
    masks: torch.Tensor,
) -> torch.Tensor:
    """`Σ_i Attn(Q, K'_i, V'_i) · mask_i`, masks `[M, Nq, 1]`. With one mask per image (M > 1) every image has its
    own softmax, as in diffusers' `ip_adapter_masks`; with one mask the images share one softmax."""
    if masks.shape[0] == 1:
        return image_prompt_attention(q, image_keys, image_values, sides, attention) * masks[0]  # [B, Nq, H·D]
    tokens = image_keys.shape[1] // masks.shape[0]  # per image
    total = None
    for index, mask in enumerate(masks):
        one_image = slice(index * tokens, (index + 1) * tokens)
        out = image_prompt_attention(q, image_keys[:, one_image], image_values[:, one_image], sides, attention) * mask
        total = out if total is None else total.add_(out)
    return total  # [B, Nq, H·D]
