"""The decoupled cross-attention of IP-Adapter, as pure tensor functions.

    out = Attn(Q, K_text, V_text) + Σ_terms Attn(Q, K', λ·V')      (= λ · Attn(Q, K', V'): λ folded into V')

computed before `to_out`, with the host layer's heads and softmax scale; each term (one Apply node) has its own
softmax. `attention(q, k, v)` is one of ComfyUI's attention functions (see unet/patch.py).
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
