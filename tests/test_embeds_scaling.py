"""Embeds scaling against a direct computation of the note's formulas (`controls-reference.md` §4).

The image-prompt term `scale · Attn(Q, K', V')` of each mode is compared with the note's formula written out on the
attention itself (softmax over the image tokens), for the three attention widths of SD1.5 and SDXL, with more
tokens than heads and fewer tokens than channels, so that a penalty on the wrong dimension or a mean over the
wrong axis shows.
"""

import pytest
import torch

from decoupled_ipadapter.ipadapter_core.embeds_scaling import EMBEDS_SCALINGS, scale_image_kv
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

HEADS = 5


def attention(q, k, v):
    """Multi-head softmax attention, `[B, N, C]` × `[B, T, C]` → `[B, N, C]`, C split into HEADS heads."""
    batch, queries, width = q.shape

    def heads(x):
        return x.reshape(batch, x.shape[1], HEADS, width // HEADS).transpose(1, 2)  # [B, H, ·, D]

    weights = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / (width // HEADS) ** 0.5, dim=-1)  # [B, H, N, T]
    return (weights @ heads(v)).transpose(1, 2).reshape(batch, queries, width)  # [B, N, C]


def note_term(mode: str, q, k, v, weight: float):
    """The note's formula for the term added to the text attention, computed directly."""
    width = k.shape[-1]
    if mode == "V only":
        return weight * attention(q, k, v)
    if mode == "K+V":
        return attention(q, weight * k, weight * v)
    penalised = weight * (width / 1280)
    if mode == "K+V w/ C penalty":
        return attention(q, penalised * k, penalised * v)
    token_mean = v.sum(dim=1, keepdim=True) / v.shape[1]  # [B, 1, C]: mean over the image tokens
    return attention(q, penalised * k, v - token_mean + penalised * token_mean)


@pytest.mark.parametrize("mode", EMBEDS_SCALINGS)
@pytest.mark.parametrize("width", [320, 640, 1280])
@pytest.mark.parametrize("weight", [0.0, 0.35, 1.0, 1.7])
def test_each_mode_is_the_notes_formula(mode, width, weight):
    generator = torch.Generator().manual_seed(width)
    q = torch.randn(2, 24, width, generator=generator, dtype=torch.float64)
    k = torch.randn(2, 16, width, generator=generator, dtype=torch.float64)  # 16 tokens: 4 per image × 4 images
    v = torch.randn(2, 16, width, generator=generator, dtype=torch.float64) + 0.5  # a non-zero token mean
    keys, values, scale = scale_image_kv(k, v, weight=weight, embeds_scaling=mode)
    assert torch.allclose(scale * attention(q, keys, values), note_term(mode, q, k, v, weight), rtol=1e-12, atol=1e-12)


def test_v_only_leaves_the_tokens_alone_and_scales_the_output():
    k, v = torch.randn(1, 4, 640), torch.randn(1, 4, 640)
    keys, values, scale = scale_image_kv(k, v, weight=0.7, embeds_scaling="V only")
    assert keys is k and values is v and scale == 0.7


def test_the_penalty_reads_the_layer_width():
    k, v = torch.ones(1, 4, 320), torch.ones(1, 4, 320)
    keys, values, scale = scale_image_kv(k, v, weight=0.8, embeds_scaling="K+V w/ C penalty")
    assert scale == 1.0 and torch.allclose(keys, torch.full_like(k, 0.8 * 320 / 1280)) and torch.equal(keys, values)
    keys, values, _ = scale_image_kv(k, v, weight=0.8, embeds_scaling="K+mean(V) w/ C penalty")
    assert torch.allclose(values, torch.full_like(v, 0.2))  # constant V: V' = 0 + λ·C/1280·V


def test_the_options_are_spelled_as_the_issue_names_them():
    assert EMBEDS_SCALINGS == ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")


def test_an_unknown_mode_is_refused():
    with pytest.raises(IPAdapterError, match="Unknown embeds_scaling 'V'.*K\\+mean\\(V\\) w/ C penalty"):
        scale_image_kv(torch.ones(1, 4, 8), torch.ones(1, 4, 8), weight=1.0, embeds_scaling="V")
