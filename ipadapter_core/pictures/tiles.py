"""Tiled references: a picture larger or longer than the encoder's square, cut into overlapping TILE_SIZE tiles, each
with an attention mask of its own region, so that each tile acts only on its part of the picture.

Pictures are ComfyUI IMAGE tensors `[B, H, W, C]` in [0, 1], masks ComfyUI MASKs `[M, H, W]` in [0, 1].
- Near-square pictures (NEAR_SQUARE: 0.75 < H/W < 1.33): the centre square is cut and resized to 2·TILE_SIZE on a
  side: 2×2 tiles that do not overlap.
- Other pictures: the short side resized to TILE_SIZE, the long side in proportion (rounded down); a picture longer
  than MAX_TILES:1 is first centre-cropped to MAX_TILES:1, so that at most MAX_TILES tiles come out.
- Resizing is PIL's LANCZOS in floating point, sharpening the contrast-adaptive sharpening of Prep Image (prep.py),
  on the resized picture before it is cut.
- Along a side of L pixels: n = ceil(L / TILE_SIZE) tiles, the first at 0, the last at L - TILE_SIZE and the others
  between, start_i = floor(i·(L - TILE_SIZE) / (n - 1)): neighbours overlap by the same amount (to a pixel). Tiles go
  row by row.
- The user's mask is stretched to the picture, then cropped and resized as the picture is (bilinear, antialiased,
  clamped to [0, 1]). Tile t's mask is the user's mask inside the tile's square and 0 elsewhere, at the size of the
  resized picture.
- Batch order is tile-major: tile t of every picture, then tile t + 1. No mask or one mask gives one mask per tile
  (Apply reads it for that tile's pictures together: one softmax per tile); one mask per picture gives one mask per
  tile image, in the tiles' order (each tile image its own softmax).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import IPAdapterError
from ..masks import mask_batch
from .prep import check_pictures_and_sharpening, resized, sharpened

TILE_SIZE = 256
MAX_TILES = 4
NEAR_SQUARE = (0.75, 1.33)  # height / width strictly between these: the centre square is tiled 2×2


@dataclass(frozen=True)
class TileLayout:
    """How a picture is tiled: its centre part of `crop` resized to `size` (both (height, width)), and tile i cut at
    `offsets[i]` (top, left) of that."""

    crop: tuple[int, int]
    size: tuple[int, int]
    offsets: tuple[tuple[int, int], ...]


def tile_starts(length: int) -> list[int]:
    """Where the tiles along a side of `length` >= TILE_SIZE pixels start (module docstring)."""
    count = math.ceil(length / TILE_SIZE)
    if count == 1:
        return [0]
    return [index * (length - TILE_SIZE) // (count - 1) for index in range(count)]


def tile_layout(height: int, width: int) -> TileLayout:
    """The tiling of a `height` × `width` picture (module docstring)."""
    low, high = NEAR_SQUARE
    if low < height / width < high:
        side = min(height, width)
        crop, size = (side, side), (2 * TILE_SIZE, 2 * TILE_SIZE)
    else:
        short_side, long_side = sorted((height, width))
        long_kept = min(long_side, MAX_TILES * short_side)
        long_resized = TILE_SIZE * long_kept // short_side
        crop = (short_side, long_kept) if height < width else (long_kept, short_side)
        size = (TILE_SIZE, long_resized) if height < width else (long_resized, TILE_SIZE)
    offsets = tuple((top, left) for top in tile_starts(size[0]) for left in tile_starts(size[1]))
    return TileLayout(crop=crop, size=size, offsets=offsets)


def centre_cropped(pictures: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, H, W, C] -> [B, height, width, C]: the centre part of `size` = (height, width)."""
    _, height, width, _ = pictures.shape
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return pictures[:, top : top + size[0], left : left + size[1], :]


def smoothly_resized(pictures: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, H, W, C] -> [B, height, width, C]: bilinear, antialiased (for masks)."""
    channels_first = pictures.permute(0, 3, 1, 2)  # [B, C, H, W]
    out = F.interpolate(channels_first, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.permute(0, 2, 3, 1)  # [B, height, width, C]


Resize = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]  # [B, H, W, C], (height, width) -> [B, height, width, C]


def fitted(pictures: torch.Tensor, layout: TileLayout, resize: Resize) -> torch.Tensor:
    """[B, H, W, C] -> [B, height, width, C] of `layout.size`: the centre part, resized with `resize`."""
    return resize(centre_cropped(pictures, layout.crop), layout.size)


def cut_tiles(pictures: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """[B, h, w, C] -> [K·B, TILE_SIZE, TILE_SIZE, C]: the K tiles, tile-major."""
    return torch.cat([pictures[:, top : top + TILE_SIZE, left : left + TILE_SIZE, :] for top, left in layout.offsets])


def region_masks(masks: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """[M, h, w] -> [K·M, h, w]: per tile, `masks` inside the tile's square and 0 elsewhere, tile-major."""
    regions = []
    for top, left in layout.offsets:
        region = torch.zeros_like(masks)
        inside = (slice(None), slice(top, top + TILE_SIZE), slice(left, left + TILE_SIZE))
        region[inside] = masks[inside]
        regions.append(region)
    return torch.cat(regions)


def tiles_and_masks(
    pictures: torch.Tensor, *, sharpening: float, attn_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[N, H, W, C]` pictures -> (tiles `[K·N, TILE_SIZE, TILE_SIZE, C]`, masks `[K·M, h, w]`) with M = 1 without a
    mask or with one, M = N with one mask per picture (module docstring)."""
    check_pictures_and_sharpening(pictures, sharpening)
    batch, height, width, _ = pictures.shape
    layout = tile_layout(height, width)
    if attn_mask is None:
        fitted_masks = torch.ones(1, *layout.size)  # [1, h, w]
    else:
        masks = mask_batch(attn_mask).cpu()  # [M, Hm, Wm]
        if masks.shape[0] not in (1, batch):
            raise IPAdapterError(
                f"attn_mask holds {masks.shape[0]} masks but image holds {batch} pictures. Give one mask (it applies "
                "to every picture) or one mask per picture, in the same order as the pictures."
            )
        stretched = smoothly_resized(masks.unsqueeze(-1), (height, width))  # [M, H, W, 1]
        fitted_masks = fitted(stretched, layout, smoothly_resized).squeeze(-1).clamp(0, 1)  # [M, h, w]
    tiled = fitted(pictures, layout, lambda picture, size: resized(picture, size, "LANCZOS"))  # [N, h, w, C]
    if sharpening > 0:
        tiled = sharpened(tiled, sharpening)
    return cut_tiles(tiled.to(pictures.dtype), layout), region_masks(fitted_masks, layout)
