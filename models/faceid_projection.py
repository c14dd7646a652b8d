"""The projections of the IP-Adapter FaceID files (h94/IP-Adapter-FaceID), with the official parameter names.

- `FaceIDProjection` (FaceID, Portrait): InsightFace embedding `[B, 512]` -> Linear(512, 1024), exact GELU,
  Linear(1024, T·C), reshape, LayerNorm -> `[B, T, C]` (T = 4, Portrait 16).
- `FaceIDPlusProjection` (FaceID Plus, PlusV2): the same MLP makes 4 latent tokens from the embedding, and a
  perceiver (no learned latents) lets them read CLIP ViT-H's penultimate hidden states of the face crop
  `[B, 257, 1280]`; PlusV2 adds the MLP tokens back, times `s` (the shortcut).
"""

import torch

from .image_projection import PerceiverStack
from .layers import CastLayerNorm, CastLinear

FACE_EMBEDDING_DIM = 512


class FaceIDProjection(torch.nn.Module):
    def __init__(self, *, cross_attention_dim: int, num_tokens: int, embedding_dim: int = FACE_EMBEDDING_DIM):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = torch.nn.Sequential(
            CastLinear(embedding_dim, embedding_dim * 2),
            torch.nn.GELU(),
            CastLinear(embedding_dim * 2, cross_attention_dim * num_tokens),
        )
        self.norm = CastLayerNorm(cross_attention_dim)

    def forward(self, face_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(face_embeds)  # [B, T·C]
        tokens = tokens.reshape(-1, self.num_tokens, self.cross_attention_dim)  # [B, T, C]
        return self.norm(tokens)


class FaceIDPlusProjection(FaceIDProjection):
    def __init__(self, *, cross_attention_dim: int, num_tokens: int, perceiver: dict, shortcut: bool):
        super().__init__(cross_attention_dim=cross_attention_dim, num_tokens=num_tokens)
        self.shortcut = shortcut  # PlusV2 (told by the file name): the MLP tokens are added back, times s
        self.perceiver_resampler = PerceiverStack(**perceiver)

    def forward(self, face_embeds: torch.Tensor, clip_hidden_states: torch.Tensor, *, shortcut_scale: float) -> torch.Tensor:
        face_tokens = super().forward(face_embeds)  # [B, T, C]
        out = self.perceiver_resampler.resample(face_tokens, clip_hidden_states)  # [B, T, C]
        return face_tokens + shortcut_scale * out if self.shortcut else out
