"""`embeds_scaling`: where a layer's λ enters the image-prompt term (the modes of cubiq's ComfyUI_IPAdapter_plus).

K', V' are the layer's image keys and values `[…, T, C]` (T image tokens, C the layer's attention width), λ the
layer's weight (`weight` × its block weight): a number, or one per batch row (`[B, 1, 1]`, with K', V' `[B, T, C]`:
the same formulas row by row). The term added to the text attention is `scale · Attn(Q, K', V')`:

- V only (the paper, diffusers): K', V' as they are, scale λ.
- K+V: K' ← λK', V' ← λV', scale 1.
- K+V w/ C penalty: λ ← λ·C/1280, then as K+V.
- K+mean(V) w/ C penalty: λ ← λ·C/1280; K' ← λK'; V' ← (V' − mean_T V') + λ·mean_T V'; scale 1.

The K+V modes at λ = 0 give a term of (about) 0 rather than nothing: leave such layers unpatched instead.
"""

import torch

from .errors import IPAdapterError

EMBEDS_SCALINGS = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
PENALTY_WIDTH = 1280  # the widest attention of SD1.5 and SDXL: layers that wide get no penalty


def check_embeds_scaling(embeds_scaling: str) -> None:
    if embeds_scaling not in EMBEDS_SCALINGS:
        raise IPAdapterError(f"Unknown embeds_scaling '{embeds_scaling}'; use one of: {', '.join(EMBEDS_SCALINGS)}.")


def scale_image_kv(
    keys: torch.Tensor, values: torch.Tensor, *, weight: float | torch.Tensor, embeds_scaling: str
) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
    """(K', V', scale) of one layer for `embeds_scaling`; keys and values `[…, T, C]`."""
    check_embeds_scaling(embeds_scaling)
    if embeds_scaling == "V only":
        return keys, values, weight
    if embeds_scaling == "K+V":
        return weight * keys, weight * values, 1.0
    penalised = weight * keys.shape[-1] / PENALTY_WIDTH
    if embeds_scaling == "K+V w/ C penalty":
        return penalised * keys, penalised * values, 1.0
    mean = values.mean(dim=-2, keepdim=True)  # [… , 1, C]: over the image tokens
    return penalised * keys, (values - mean) + penalised * mean, 1.0
