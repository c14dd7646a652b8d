"""The InstantX SD3.5-Large IP-Adapter as one module, with the file's own parameter names.

Its `state_dict()` keys are exactly those of `ip-adapter.bin` (InstantX/SD3.5-Large-IP-Adapter), flattened:
- `image_proj.*`: a perceiver resampler conditioned on the timestep (SigLIP penultimate hidden states `[B, S, E]`
  and the timestep -> tokens `[B, Q, C]` and a timestep embedding `[B, W]`). Per layer i the file nests
  `layers.{i}.0` (attention: `norm1`, `norm2`, `to_q`, `to_kv`, `to_out`), `layers.{i}.1` (feed-forward: LayerNorm
  `0`, Linear `1`, GELU, Linear `3`) and `layers.{i}.2.1` (the Linear of the timestep modulation); diffusers renames
  them `ln0`, `ln1`, `attn.*`, `adaln_norm`, `ff.net.*`, `adaln_proj`.
- `ip_adapter.{i}.*`, one per joint block: `norm_ip.linear` (adaptive LayerNorm of the tokens on the timestep
  embedding), `to_k_ip`, `to_v_ip` (no bias), and the per-head RMSNorms `norm_q`, `norm_k`, `norm_ip_k`.
"""

import math

import torch
import torch.nn.functional as F

from .image_projection import FeedForward, PerceiverAttention
from .layers import CastLayerNorm, CastLinear

RESAMPLER_DIM_HEAD = 64
RESAMPLER_FF_MULT = 4
TIMESTEP_MAX_PERIOD = 10000
IP_NORM_EPS = 1e-6


def timestep_sinusoid(timesteps: torch.Tensor, width: int) -> torch.Tensor:
    """`[B]` -> `[B, width]`: cos then sin of timestep · 10000^(-i/half), in fp32 (diffusers' Timesteps with
    flip_sin_to_cos=True, downscale_freq_shift=0)."""
    half = width // 2
    exponent = -math.log(TIMESTEP_MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # [B, width]


class TimestepEmbedding(torch.nn.Module):
    """Linear, SiLU, Linear: the sinusoid `[B, in]` -> `[B, W]` (keys `linear_1`, `linear_2`)."""

    def __init__(self, *, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = CastLinear(in_dim, dim)
        self.linear_2 = CastLinear(dim, dim)

    def forward(self, sinusoid: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(sinusoid)))


def shift_and_scale(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x · (1 + scale) + shift`, per batch row: x `[B, L, W]`, shift/scale `[B, W]`."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimeResamplerLayer(torch.nn.ModuleList):
    """One resampler layer: `0` attention, `1` feed-forward, `2` SiLU + Linear (the timestep's 4 modulations)."""

    def __init__(self, *, dim: int, heads: int):
        super().__init__(
            [
                PerceiverAttention(dim=dim, dim_head=RESAMPLER_DIM_HEAD, heads=heads),
                FeedForward(dim=dim, mult=RESAMPLER_FF_MULT),
                torch.nn.Sequential(torch.nn.SiLU(), CastLinear(dim, 4 * dim)),
            ]
        )

    def forward(self, features: torch.Tensor, latents: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        attention, feed_forward, modulation = self
        shift_msa, scale_msa, shift_mlp, scale_mlp = modulation(time).chunk(4, dim=1)  # 4 × [B, dim]
        modulated = shift_and_scale(attention.norm2(latents), shift_msa, scale_msa)  # [B, Q, dim]
        latents = attention.attend(attention.norm1(features), modulated) + latents
        normed = shift_and_scale(feed_forward[0](latents), shift_mlp, scale_mlp)  # [B, Q, dim]
        return feed_forward[3](feed_forward[2](feed_forward[1](normed))) + latents


class TimeResampler(torch.nn.Module):
    """Q learned latents read the image features; every layer is modulated by the timestep embedding.

    `forward(hidden_states [B, S, E], timesteps [B])` -> (tokens `[B, Q, C]`, timestep embedding `[B, dim]`).
    """

    def __init__(self, *, embedding_dim: int, dim: int, output_dim: int, depth: int, heads: int, num_queries: int, timestep_dim: int):
        super().__init__()
        self.timestep_dim = timestep_dim
        self.latents = torch.nn.Parameter(torch.empty(1, num_queries, dim))
        self.proj_in = CastLinear(embedding_dim, dim)
        self.proj_out = CastLinear(dim, output_dim)
        self.norm_out = CastLayerNorm(output_dim)
        self.time_embedding = TimestepEmbedding(in_dim=timestep_dim, dim=dim)
        self.layers = torch.nn.ModuleList(TimeResamplerLayer(dim=dim, heads=heads) for _ in range(depth))

    def forward(self, hidden_states: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        time = self.time_embedding(timestep_sinusoid(timesteps, self.timestep_dim).to(hidden_states.dtype))  # [B, dim]
        features = self.proj_in(hidden_states) + time[:, None]  # [B, S, dim]
        latents = self.latents.to(device=features.device, dtype=features.dtype)
        latents = latents.repeat(features.shape[0], 1, 1)  # [B, Q, dim]
        for layer in self.layers:
            latents = layer(features, latents, time)
        return self.norm_out(self.proj_out(latents)), time  # [B, Q, C], [B, dim]


class HeadRMSNorm(torch.nn.Module):
    """RMSNorm over the last (head) dimension, eps 1e-6, with a weight; the mean square is taken in fp32."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_square = x.float().pow(2).mean(-1, keepdim=True)
        normed = (x * torch.rsqrt(mean_square + IP_NORM_EPS)).to(x.dtype)
        return normed * self.weight.to(device=x.device, dtype=x.dtype)


class TokenNorm(torch.nn.Module):
    """LayerNorm of the tokens (no affine, eps 1e-6), shifted and scaled by `linear(SiLU(timestep embedding))`."""

    def __init__(self, *, time_dim: int, dim: int):
        super().__init__()
        self.linear = CastLinear(time_dim, 2 * dim)

    def forward(self, tokens: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(time)).chunk(2, dim=1)  # 2 × [B, C]
        return shift_and_scale(F.layer_norm(tokens, tokens.shape[-1:], eps=IP_NORM_EPS), shift, scale)


class JointBlockIPLayer(torch.nn.Module):
    """What one joint block adds: K'/V' of the tokens and the RMSNorms of the image-prompt attention."""

    def __init__(self, *, token_dim: int, hidden_size: int, head_dim: int, time_dim: int):
        super().__init__()
        self.norm_ip = TokenNorm(time_dim=time_dim, dim=token_dim)
        self.to_k_ip = CastLinear(token_dim, hidden_size, bias=False)
        self.to_v_ip = CastLinear(token_dim, hidden_size, bias=False)
        self.norm_q = HeadRMSNorm(head_dim)
        self.norm_k = HeadRMSNorm(head_dim)
        self.norm_ip_k = HeadRMSNorm(head_dim)

    def forward(self, tokens: torch.Tensor, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens `[B, T, C]`, time `[B, W]` -> K', V' `[B, T, hidden]` each."""
        normed = self.norm_ip(tokens, time)
        return self.to_k_ip(normed), self.to_v_ip(normed)


class SD3IPAdapterModel(torch.nn.Module):
    """`image_proj` (the timestep resampler) and `layer(i)`, joint block i's image-prompt weights."""

    def __init__(
        self,
        *,
        embedding_dim: int,
        resampler_dim: int,
        resampler_depth: int,
        resampler_heads: int,
        num_tokens: int,
        timestep_dim: int,
        hidden_size: int,
        head_dim: int,
        joint_blocks: int,
    ):
        super().__init__()
        self.image_proj = TimeResampler(
            embedding_dim=embedding_dim, dim=resampler_dim, output_dim=hidden_size, depth=resampler_depth,
            heads=resampler_heads, num_queries=num_tokens, timestep_dim=timestep_dim,
        )  # fmt: skip
        self.ip_adapter = torch.nn.ModuleList(
            JointBlockIPLayer(token_dim=hidden_size, hidden_size=hidden_size, head_dim=head_dim, time_dim=resampler_dim)
            for _ in range(joint_blocks)
        )

    def layer(self, index: int) -> JointBlockIPLayer:
        return self.ip_adapter[index]
