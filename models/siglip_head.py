"""SigLIP's attention-pooling head (`vision_model.head.*` of a transformers SigLIP vision file), with its names.

ComfyUI's CLIP vision model gives SigLIP's post-layernorm token sequence; transformers' `pooler_output` is this
head on it: one learned query (`probe`) attends to the tokens (`attention`, a MultiheadAttention), then a residual
MLP after a LayerNorm (`layernorm`, `mlp.fc1`, tanh GELU, `mlp.fc2`). The result is the pooled vector `[B, W]`.
"""

import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-6  # SigLIP so400m's layer_norm_eps


class SigLIPMLP(torch.nn.Module):
    def __init__(self, *, width: int, inner_dim: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(width, inner_dim)
        self.fc2 = torch.nn.Linear(inner_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SigLIPPoolingHead(torch.nn.Module):
    def __init__(self, *, width: int, heads: int, inner_dim: int):
        super().__init__()
        self.probe = torch.nn.Parameter(torch.empty(1, 1, width))
        self.attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.layernorm = torch.nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = SigLIPMLP(width=width, inner_dim=inner_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The post-layernorm tokens `[B, S, W]` -> the pooled output `[B, W]`."""
        probe = self.probe.expand(tokens.shape[0], -1, -1)  # [B, 1, W]
        pooled = self.attention(probe, tokens, tokens, need_weights=False)[0]  # [B, 1, W]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]  # [B, W]
