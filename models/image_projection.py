"""The three projection networks of the official IP-Adapter files, with the official parameter names.

Each turns the CLIP image encoder's output into the image-prompt tokens `[B, T, C]` that the decoupled
cross-attention layers read (C = the UNet's cross-attention width: 768 for SD1.5, 2048 for SDXL).

- `LinearProjection`  (files `ip-adapter_*`):          image_embeds `[B, E]`          -> `[B, 4, C]`
- `MLPProjection`     (files `ip-adapter-full-face_*`): penultimate states `[B, S, E]` -> `[B, S, C]`
- `Resampler`         (files `ip-adapter-plus*_*`):     penultimate states `[B, S, E]` -> `[B, Q, C]`
"""

import torch

from .layers import CastLayerNorm, CastLinear


class LinearProjection(torch.nn.Module):
    """`tokens = LayerNorm(reshape(W·x + b, [T, C]))`: the base adapter's projection."""

    def __init__(self, *, embedding_dim: int, cross_attention_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = CastLinear(embedding_dim, num_tokens * cross_attention_dim)
        self.norm = CastLayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(image_embeds)  # [B, T·C]
        tokens = tokens.reshape(-1, self.num_tokens, self.cross_attention_dim)  # [B, T, C]
        return self.norm(tokens)


class MLPProjection(torch.nn.Module):
    """Linear, exact GELU, Linear, LayerNorm, applied to every token: the full-face adapter's projection."""

    def __init__(self, *, embedding_dim: int, cross_attention_dim: int):
        super().__init__()
        self.proj = torch.nn.Sequential(
            CastLinear(embedding_dim, embedding_dim),
            torch.nn.GELU(),
            CastLinear(embedding_dim, cross_attention_dim),
            CastLayerNorm(cross_attention_dim),
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states)  # [B, S, E] -> [B, S, C]


class PerceiverAttention(torch.nn.Module):
    """Latents attend to the image features and to themselves (keys/values from both), as in the reference."""

    def __init__(self, *, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner_dim = dim_head * heads
        self.norm1 = CastLayerNorm(dim)
        self.norm2 = CastLayerNorm(dim)
        self.to_q = CastLinear(dim, inner_dim, bias=False)
        self.to_kv = CastLinear(dim, inner_dim * 2, bias=False)
        self.to_out = CastLinear(inner_dim, dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.dim_head).transpose(1, 2)  # [B, H, L, D]

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.attend(self.norm1(features), self.norm2(latents))

    def attend(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The attention on already normalised features `[B, S, dim]` and latents `[B, Q, dim]` -> `[B, Q, dim]`."""
        batch, num_latents, _ = latents.shape
        query = self._split_heads(self.to_q(latents))  # [B, H, Q, D]
        key, value = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)  # 2 x [B, S+Q, H·D]
        key, value = self._split_heads(key), self._split_heads(value)  # [B, H, S+Q, D]
        # Both sides scaled by D^-1/4 before the product, softmax in fp32: the reference's fp16-stable form.
        scale = self.dim_head**-0.25
        scores = (query * scale) @ (key * scale).transpose(-2, -1)  # [B, H, Q, S+Q]
        weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        attended = weights @ value  # [B, H, Q, D]
        attended = attended.transpose(1, 2).reshape(batch, num_latents, -1)  # [B, Q, H·D]
        return self.to_out(attended)


class FeedForward(torch.nn.Sequential):
    """LayerNorm, Linear (×mult, no bias), exact GELU, Linear (no bias): keys `0`, `1`, `3`."""

    def __init__(self, *, dim: int, mult: int):
        super().__init__(
            CastLayerNorm(dim),
            CastLinear(dim, dim * mult, bias=False),
            torch.nn.GELU(),
            CastLinear(dim * mult, dim, bias=False),
        )


class PerceiverStack(torch.nn.Module):
    """The perceiver layers shared by the plus resampler and FaceID Plus: latents `[B, Q, dim]` read features
    `[B, S, E]` through `depth` attention + feed-forward layers, then `[B, Q, C]` out."""

    def __init__(self, *, dim: int, depth: int, dim_head: int, heads: int, embedding_dim: int, output_dim: int, ff_mult: int):
        super().__init__()
        self.proj_in = CastLinear(embedding_dim, dim)
        self.proj_out = CastLinear(dim, output_dim)
        self.norm_out = CastLayerNorm(output_dim)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleList(
                [PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), FeedForward(dim=dim, mult=ff_mult)]
            )
            for _ in range(depth)
        )

    def resample(self, latents: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(hidden_states)  # [B, S, dim]
        for attention, feed_forward in self.layers:
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))  # [B, Q, C]


class Resampler(PerceiverStack):
    """The perceiver resampler of the "plus" adapters: Q learned latents read the CLIP hidden states."""

    def __init__(self, *, num_queries: int, **stack):
        super().__init__(**stack)
        self.latents = torch.nn.Parameter(torch.empty(1, num_queries, stack["dim"]))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(device=hidden_states.device, dtype=hidden_states.dtype)
        latents = latents.repeat(hidden_states.shape[0], 1, 1)  # [B, Q, dim]
        return self.resample(latents, hidden_states)
