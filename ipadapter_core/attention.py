"""The decoupled cross-attention of IP-Adapter, as pure tensor functions.

    out = Attn(Q, K_text, V_text) + Σ_adapters λ · gate · Attn(Q, K', V')

computed before `to_out`, with the host layer's heads and softmax scale; each adapter has its own softmax.
`attention(q, k, v)` is whatever attention the host uses (ComfyUI's optimized_attention inside a sampler).
"""

from collections.abc import Callable, Sequence

import torch

COND, UNCOND = 0, 1

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rows_for_batch(by_kind: torch.Tensor, cond_or_uncond: Sequence[int], rows: int) -> torch.Tensor:
    """Give every batch row the conditional or unconditional image tokens of its chunk.

    `by_kind` is `[2, T, W]` (index 0 = conditional, 1 = unconditional); the batch is `len(cond_or_uncond)` equal
    chunks in that order. Returns `[rows, T, W]`: each chunk an expanded view, concatenated into one tensor, with no
    index tensor and no device sync.
    """
    chunk = rows // len(cond_or_uncond)
    return torch.cat([by_kind[kind].expand(chunk, -1, -1) for kind in cond_or_uncond])  # [rows, T, W]


def image_prompt_attention(
    q: torch.Tensor,
    image_keys: torch.Tensor,
    image_values: torch.Tensor,
    cond_or_uncond: Sequence[int],
    attention: Attention,
) -> torch.Tensor:
    """`Attn(Q, K', V')` for a batch whose chunks are conditional or unconditional rows. q: `[B, Nq, H·D]`."""
    keys = rows_for_batch(image_keys, cond_or_uncond, q.shape[0])  # [B, T, H·D]
    values = rows_for_batch(image_values, cond_or_uncond, q.shape[0])  # [B, T, H·D]
    return attention(q, keys, values)  # [B, Nq, H·D]


def add_scaled(base: torch.Tensor, term: torch.Tensor, *, weight: float, gate: torch.Tensor | None) -> torch.Tensor:
    """`base + λ·gate·term`; gate is a 0/1 device scalar (the step range), so no host sync is needed to apply it."""
    scale = weight if gate is None else gate * weight
    return base + scale * term
