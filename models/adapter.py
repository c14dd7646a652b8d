"""The whole IP-Adapter as one module: the image projection and one K'/V' pair per cross-attention layer.

Its `state_dict()` keys are exactly the flat official format (`image_proj.*`, `ip_adapter.<N>.to_k_ip.weight`, …),
so an official file loads into it with `load_state_dict(..., strict=True)`.
"""

import torch

from .layers import CastLinear


class DecoupledKeyValue(torch.nn.Module):
    """The new K'/V' projections of one cross-attention layer: image tokens `[B, T, C]` -> `[B, T, hidden]`."""

    def __init__(self, *, cross_attention_dim: int, hidden_size: int):
        super().__init__()
        self.to_k_ip = CastLinear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = CastLinear(cross_attention_dim, hidden_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_k_ip(tokens), self.to_v_ip(tokens)


class IPAdapterModel(torch.nn.Module):
    """`image_proj` turns CLIP output into tokens; `ip_adapter[str(N)]` holds layer N's K'/V' (N odd)."""

    def __init__(self, *, image_proj: torch.nn.Module, cross_attention_dim: int, hidden_sizes: dict[int, int]):
        super().__init__()
        self.image_proj = image_proj
        self.ip_adapter = torch.nn.ModuleDict(
            {
                str(number): DecoupledKeyValue(cross_attention_dim=cross_attention_dim, hidden_size=hidden)
                for number, hidden in sorted(hidden_sizes.items())
            }
        )

    def layer(self, number: int) -> DecoupledKeyValue:
        return self.ip_adapter[str(number)]
