"""Attention masks: where on the picture an image prompt acts, brought to each layer's query grid.

A ComfyUI MASK is `[B, H, W]` (or `[H, W]`) in 0..1 at any resolution; soft edges are kept. At a layer with N
queries the mask is resized bicubically (no antialiasing, no clamping: bicubic may overshoot 0..1 slightly at hard
edges, as in diffusers) to the layer's grid of rows × columns and flattened row by row, the layer's token order.

- The grid is the layer's own: the latent's height and width (ComfyUI gives the latent's shape to attention patches,
  `original_shape`) halved, rounding up, until rows × columns = N. A mask whose aspect differs from the picture's is
  stretched to the picture, as a user expects.
- Where the aspects match, `IPAdapterMaskProcessor.downsample` (diffusers 0.42.1) computes the same grid from the
  mask's own aspect (tests/test_masks.py checks every UNet level of its sizes), so the result is diffusers' own.
- A caller that gives no latent shape (or one no halving fits) gets diffusers' rule: the mask's aspect r = W/H, a
  grid of h = int(sqrt(N / r)) rows, plus one if h does not divide N, and w = N // h columns, zero-padded at the end
  up to N when h·w < N. h·w never exceeds N, so diffusers' cut to N never applies. One difference: where N < r the
  rule gives h = 0 (diffusers then divides by zero); here h is at least 1.
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


def latent_grid(latent_height: int, latent_width: int, *, queries: int) -> tuple[int, int] | None:
    """The (rows, columns) of a UNet layer with `queries` queries on a latent of `latent_height`×`latent_width`: the
    latent halved (rounding up, as a stride-2 convolution) until it has that many; None where no halving fits."""
    rows, columns = latent_height, latent_width
    while rows * columns > queries and (rows, columns) != (1, 1):
        rows, columns = math.ceil(rows / 2), math.ceil(columns / 2)
    return (rows, columns) if rows * columns == queries else None


def downsample_mask(mask: torch.Tensor, *, queries: int, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
    """`[B, H, W]` → `[B, queries]`: each mask's weight per query of a layer, in the layer's token order.
    `latent_size`: the latent's (height, width), or None where the caller does not know it (diffusers' grid)."""
    grid = latent_grid(*latent_size, queries=queries) if latent_size is not None else None
    rows, columns = grid or mask_grid(mask.shape[1], mask.shape[2], queries=queries)
    small = F.interpolate(mask.unsqueeze(0), size=(rows, columns), mode="bicubic")  # [1, B, rows, columns]
    flat = small.reshape(mask.shape[0], rows * columns)  # [B, rows·columns]
    return F.pad(flat, (0, queries - rows * columns))  # [B, queries]
