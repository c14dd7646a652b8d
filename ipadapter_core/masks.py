"""Attention masks: where on the picture an image prompt acts, brought to each layer's queries as diffusers does.

A ComfyUI MASK is `[B, H, W]` (or `[H, W]`) in 0..1 at any resolution; soft edges are kept. For a layer with N
queries, `IPAdapterMaskProcessor.downsample` (diffusers 0.42.1) takes the mask's own aspect r = W/H, a grid of
h = int(sqrt(N / r)) rows, plus one if h does not divide N, and w = N // h columns, resizes bicubically to (h, w)
(no antialiasing, no clamping: bicubic may overshoot 0..1 slightly at hard edges, as there), flattens row by row,
and zero-pads the end up to N when h·w < N (a mask whose aspect differs from the latent's). h·w never exceeds N
(w = N // h), so diffusers' cut to N never applies. One difference: where N < r the rule gives h = 0 (diffusers
then divides by zero); here h is at least 1.
"""

import math

import torch
import torch.nn.functional as F

from .errors import IPAdapterError


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI MASK as `[B, H, W]` float32 (a single `[H, W]` mask gets B = 1)."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)  # [1, H, W]
    if mask.ndim != 3 or mask.shape[0] == 0 or mask.shape[1] == 0 or mask.shape[2] == 0:
        raise IPAdapterError(
            f"attn_mask has shape {list(mask.shape)}; connect a MASK ([batch, height, width], for example from "
            "Load Image's mask output or Solid Mask)."
        )
    return mask.float()


def mask_grid(height: int, width: int, *, queries: int) -> tuple[int, int]:
    """diffusers' (rows, columns) for a mask of `height`×`width` on a layer with `queries` queries."""
    rows = max(int(math.sqrt(queries / (width / height))), 1)
    rows += queries % rows != 0
    return rows, queries // rows


def downsample_mask(mask: torch.Tensor, *, queries: int) -> torch.Tensor:
    """`[B, H, W]` → `[B, queries]`: each mask's weight per query of a layer, in the layer's token order."""
    rows, columns = mask_grid(mask.shape[1], mask.shape[2], queries=queries)
    small = F.interpolate(mask.unsqueeze(0), size=(rows, columns), mode="bicubic")  # [1, B, rows, columns]
    flat = small.reshape(mask.shape[0], rows * columns)  # [B, rows·columns]
    return F.pad(flat, (0, queries - rows * columns))  # [B, queries]
