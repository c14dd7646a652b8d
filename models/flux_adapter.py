"""The XLabs Flux IP-Adapter as one module, with the file's own parameter names.

Its `state_dict()` keys are exactly those of `ip_adapter.safetensors` (XLabs-AI/flux-ip-adapter, -v2):
`ip_adapter_proj_model.{proj,norm}.*` (CLIP ViT-L/14 image embeds -> T tokens of the T5 width) and, per double
block i, `double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}` (tokens -> K'/V').
"""

import torch

from .image_projection import LinearProjection
from .layers import CastLinear


class DoubleStreamKeyValue(torch.nn.Module):
    """K'/V' of one double block: image tokens `[B, T, C]` -> `[B, T, hidden]` each, with bias."""

    def __init__(self, *, context_dim: int, hidden_size: int):
        super().__init__()
        self.ip_adapter_double_stream_k_proj = CastLinear(context_dim, hidden_size)
        self.ip_adapter_double_stream_v_proj = CastLinear(context_dim, hidden_size)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ip_adapter_double_stream_k_proj(tokens), self.ip_adapter_double_stream_v_proj(tokens)


class _DoubleBlockSlot(torch.nn.Module):
    """Holds a block's K'/V' under the name `processor`, as the file nests it."""

    def __init__(self, *, context_dim: int, hidden_size: int):
        super().__init__()
        self.processor = DoubleStreamKeyValue(context_dim=context_dim, hidden_size=hidden_size)


class FluxIPAdapterModel(torch.nn.Module):
    """`image_proj` turns CLIP image embeds into tokens; `layer(i)` is double block i's K'/V'."""

    def __init__(self, *, embedding_dim: int, context_dim: int, num_tokens: int, hidden_size: int, double_blocks: int):
        super().__init__()
        self.ip_adapter_proj_model = LinearProjection(
            embedding_dim=embedding_dim, cross_attention_dim=context_dim, num_tokens=num_tokens
        )
        self.double_blocks = torch.nn.ModuleList(
            [_DoubleBlockSlot(context_dim=context_dim, hidden_size=hidden_size) for _ in range(double_blocks)]
        )

    @property
    def image_proj(self) -> torch.nn.Module:
        return self.ip_adapter_proj_model

    def layer(self, index: int) -> DoubleStreamKeyValue:
        return self.double_blocks[index].processor
