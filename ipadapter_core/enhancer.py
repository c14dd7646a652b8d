"""The CLIP vision enhancer: a reference picture read once whole and once in tiles, the two readings mixed.

The popular port's ClipVision Enhancer, with the same numbers:
1. Each picture is cut into `tiles`×`tiles` equal tiles, row by row (the last H mod tiles rows and W mod tiles
   columns are left out). Each tile is encoded on its own, at the encoder's resolution, so the encoder sees the
   detail of a tile that the whole picture, shrunk to 224², loses.
2. The tiles' readings are put back together where the tiles were and averaged down to one picture's size:
   - penultimate hidden states `[1 + g², E]` (a class token, then a g×g grid of patch tokens): the patch grids are
     stitched into one (tiles·g)² grid, average-pooled back to g×g; the class tokens are averaged.
   - image embeds `[D]` (one vector per picture): read as a √D×√D grid (32×32 for ViT-H's 1024 values), stitched and
     pooled the same way. This has no geometric meaning (the values of a projection are not laid out in space); the
     port does it, so it is reproduced. A width that is not a square (ViT-bigG's 1280) has no such grid: refused.
3. The merged reading is mixed with the whole picture's by `ratio`: one picture gives two rows `[whole·ratio,
   merged]` (two images of one image prompt: their tokens side by side), a batch of several gives one row per
   picture, `whole·ratio + merged·(1 − ratio)`.
"""

import math

import torch
import torch.nn.functional as F

from .encoders import IMAGE_EMBEDS, PENULTIMATE, SIGLIP
from .errors import IPAdapterError

MAX_TILES = 16


def check_enhancer_fits(spec, source: str, *, tiles: int, ratio: float) -> None:
    """Refuse what the enhancer cannot do before anything is encoded: tiles out of 1..MAX_TILES, a ratio out of 0..1,
    and the encoders' outputs that have no class token and square patch grid (SigLIP) or no square width."""
    if not 1 <= tiles <= MAX_TILES:
        raise IPAdapterError(f"enhance_tiles is {tiles}; use 1 (no enhancement) to {MAX_TILES}.")
    if not 0.0 <= ratio <= 1.0:
        raise IPAdapterError(f"enhance_ratio is {ratio}; use a value from 0 to 1.")
    if tiles == 1:
        return
    if spec.image_encoder == SIGLIP or spec.clip_output not in (IMAGE_EMBEDS, PENULTIMATE):
        raise IPAdapterError(
            f"enhance_tiles works with the CLIP ViT-H and ViT-bigG encoders (class token and a square patch grid), "
            f"but '{source}' ({spec.variant}) reads the {spec.image_encoder} {spec.clip_output.replace('_', ' ')}. "
            "Set enhance_tiles to 1."
        )
    if spec.clip_output == IMAGE_EMBEDS and math.isqrt(spec.embedding_dim) ** 2 != spec.embedding_dim:
        raise IPAdapterError(
            f"enhance_tiles reads image embeds as a square grid, but '{source}' ({spec.variant}) reads "
            f"{spec.image_encoder} image embeds of width {spec.embedding_dim}, which is not a square number. Set "
            "enhance_tiles to 1, or use a plus adapter (penultimate hidden states)."
        )


def split_into_tiles(images: torch.Tensor, *, tiles: int) -> torch.Tensor:
    """`[B, H, W, C]` -> `[B·tiles², H // tiles, W // tiles, C]`: each picture's tiles row by row, picture by picture."""
    batch, height, width, channels = images.shape
    tile_height, tile_width = height // tiles, width // tiles
    if tile_height == 0 or tile_width == 0:
        raise IPAdapterError(
            f"A {height}×{width} picture cannot be cut into {tiles}×{tiles} tiles. Lower enhance_tiles to at most "
            f"{min(height, width)}."
        )
    kept = images[:, : tile_height * tiles, : tile_width * tiles, :]  # [B, tiles·h, tiles·w, C]
    grid = kept.reshape(batch, tiles, tile_height, tiles, tile_width, channels)  # [B, row, h, column, w, C]
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, tile_height, tile_width, channels)  # [B·tiles², h, w, C]


def stitch_and_pool(grids: torch.Tensor, *, tiles: int) -> torch.Tensor:
    """`[B·tiles², g, g, C]` (each tile's grid, tiles in split_into_tiles' order) -> `[B, g, g, C]`: the tiles'
    grids put side by side into one (tiles·g)² grid per picture, average-pooled back to g×g."""
    _, side, _, channels = grids.shape
    per_tile = grids.reshape(-1, tiles, tiles, side, side, channels)  # [B, row, column, g, g, C]
    stitched = per_tile.permute(0, 1, 3, 2, 4, 5).reshape(-1, tiles * side, tiles * side, channels)  # [B, tg, tg, C]
    pooled = F.adaptive_avg_pool2d(stitched.permute(0, 3, 1, 2), (side, side))  # [B, C, g, g]
    return pooled.permute(0, 2, 3, 1)  # [B, g, g, C]


def merge_tile_hidden_states(hidden: torch.Tensor, *, tiles: int) -> torch.Tensor:
    """`[B·tiles², 1 + g², E]` hidden states of the tiles -> `[B, 1 + g², E]`: the class tokens averaged, the patch
    grids stitched and pooled."""
    count, tokens, width = hidden.shape
    side = math.isqrt(tokens - 1)
    if side * side != tokens - 1:
        raise IPAdapterError(
            f"enhance_tiles needs hidden states of a class token and a square patch grid; these have {tokens} tokens. "
            "Set enhance_tiles to 1."
        )
    per_picture = hidden.reshape(-1, tiles * tiles, tokens, width)  # [B, tiles², T, E]
    class_token = per_picture[:, :, :1, :].mean(dim=1)  # [B, 1, E]
    patches = hidden[:, 1:, :].reshape(count, side, side, width)  # [B·tiles², g, g, E]
    pooled = stitch_and_pool(patches, tiles=tiles).reshape(-1, side * side, width)  # [B, g², E]
    return torch.cat([class_token, pooled], dim=1)  # [B, 1 + g², E]


def merge_tile_image_embeds(image_embeds: torch.Tensor, *, tiles: int) -> torch.Tensor:
    """`[B·tiles², D]` image embeds of the tiles -> `[B, D]`, each vector read as a √D×√D grid (see the module
    docstring); D must be a square number."""
    count, width = image_embeds.shape
    side = math.isqrt(width)
    if side * side != width:
        raise IPAdapterError(f"enhance_tiles reads image embeds as a square grid; width {width} is not a square number.")
    grids = image_embeds.reshape(count, side, side, 1)  # [B·tiles², s, s, 1]
    return stitch_and_pool(grids, tiles=tiles).reshape(-1, width)  # [B, D]


def merge_tiles(outputs: torch.Tensor, *, tiles: int, clip_output: str) -> torch.Tensor:
    """The tiles' `clip_output` (IMAGE_EMBEDS or PENULTIMATE), one merged reading per picture."""
    if clip_output == IMAGE_EMBEDS:
        return merge_tile_image_embeds(outputs, tiles=tiles)
    return merge_tile_hidden_states(outputs, tiles=tiles)


def mix_with_whole(whole: torch.Tensor, merged: torch.Tensor, *, ratio: float) -> torch.Tensor:
    """One picture: `[whole·ratio, merged]` (two rows of one image prompt); several: `whole·ratio + merged·(1 − ratio)`,
    row by row."""
    if whole.shape[0] == 1:
        return torch.cat([whole * ratio, merged])  # [2, …]
    return whole * ratio + merged * (1 - ratio)  # [B, …]
