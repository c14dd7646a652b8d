"""The InstantX FLUX.1-dev IP-Adapter as one module, with the file's own parameter names.

Its `state_dict()` keys are exactly those of `ip-adapter.bin` (InstantX/FLUX.1-dev-IP-Adapter), flattened:
- `image_proj.proj.0`, `image_proj.proj.2`, `image_proj.norm`: Linear, exact GELU, Linear to T tokens of width C,
  LayerNorm(C) (SigLIP's pooled output `[B, E]` -> `[B, T, C]`; E = 1152, 2E = 2304, C = 4096, T = 128);
- `ip_adapter.{i}.to_k_ip`, `ip_adapter.{i}.to_v_ip` (no bias), one pair per attention block of Flux, the double
  blocks first, then the single blocks (19 + 38 in FLUX.1). K' gets an RMS norm without weights over each head
  (eps 1e-5, computed in fp32); V' is left as it is (InstantX's code; its `norm_added_v` is commented out).
"""

import torch

from .layers import CastLayerNorm, CastLinear

KEY_NORM_EPS = 1e-5


class MLPTokenProjection(torch.nn.Module):
    """`tokens = LayerNorm(reshape(Linear(GELU(Linear(x))), [T, C]))`."""

    def __init__(self, *, embedding_dim: int, inner_dim: int, token_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.proj = torch.nn.Sequential(
            CastLinear(embedding_dim, inner_dim), torch.nn.GELU(), CastLinear(inner_dim, num_tokens * token_dim)
        )
        self.norm = CastLayerNorm(token_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(pooled)  # [B, T·C]
        return self.norm(tokens.reshape(-1, self.num_tokens, self.token_dim))  # [B, T, C]


def head_rms_norm(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """RMS norm without weights over each head of `x` `[B, T, H·D]`, in fp32, back in x's dtype."""
    heads = x.reshape(*x.shape[:-1], -1, head_dim).float()  # [B, T, H, D]
    normed = heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + KEY_NORM_EPS)
    return normed.reshape(x.shape).to(x.dtype)  # [B, T, H·D]


class NormedKeyValue(torch.nn.Module):
    """K'/V' of one block: tokens `[B, T, C]` -> (RMS-normed K', V') `[B, T, hidden]` each."""

    def __init__(self, *, token_dim: int, hidden_size: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.to_k_ip = CastLinear(token_dim, hidden_size, bias=False)
        self.to_v_ip = CastLinear(token_dim, hidden_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return head_rms_norm(self.to_k_ip(tokens), self.head_dim), self.to_v_ip(tokens)


class InstantXFluxAdapterModel(torch.nn.Module):
    """`image_proj` turns SigLIP's pooled output into tokens; `layer(n)` is block n's K'/V' (double blocks first)."""

    def __init__(
        self, *, embedding_dim: int, inner_dim: int, token_dim: int, num_tokens: int, hidden_size: int, head_dim: int, layers: int
    ):
        super().__init__()
        self.image_proj = MLPTokenProjection(
            embedding_dim=embedding_dim, inner_dim=inner_dim, token_dim=token_dim, num_tokens=num_tokens
        )
        self.ip_adapter = torch.nn.ModuleList(
            NormedKeyValue(token_dim=token_dim, hidden_size=hidden_size, head_dim=head_dim) for _ in range(layers)
        )

    def layer(self, number: int) -> NormedKeyValue:
        return self.ip_adapter[number]
