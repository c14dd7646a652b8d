"""Linear and LayerNorm that compute in their input's dtype and device.

The official checkpoints are fp16; a sampler may run in fp32 (CPU) or bf16. These layers keep the stored weights
as they are and cast them to the input on the fly, as ComfyUI's `manual_cast` operations do, so one loaded
adapter serves every model dtype without a second copy of its weights.
"""

import torch
import torch.nn.functional as F


class CastLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(device=x.device, dtype=x.dtype)
        bias = None if self.bias is None else self.bias.to(device=x.device, dtype=x.dtype)
        return F.linear(x, weight, bias)


class CastLayerNorm(torch.nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(device=x.device, dtype=x.dtype)
        bias = self.bias.to(device=x.device, dtype=x.dtype)
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
