"""One Apply node's contribution to an SD3 (MMDiT) model, whose image-prompt tokens depend on the timestep.

The InstantX resampler reads the timestep, and every block's `norm_ip` reads the resampler's timestep embedding,
so tokens and K'/V' are computed once per step (per sigma), device and dtype, for the cond and uncond embeds
together, and kept only for the current step.
"""

from collections.abc import Callable

import torch

from ..errors import IPAdapterError
from ..patch_protocol import is_same_device
from ..term import TermBasics


class StepTokens:
    """The tokens of one step on one device and dtype, and the K'/V' of the blocks computed so far."""

    def __init__(self, sigma: float, tokens: torch.Tensor, time: torch.Tensor):
        self.sigma = sigma
        self.tokens = tokens  # [2 (cond, uncond), N·T, C]
        self.time = time  # [2, W]: the resampler's timestep embedding
        self.blocks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


class TimestepImagePromptTerm(TermBasics):
    def __init__(self, *, timestep_of_sigma: Callable[[torch.Tensor], torch.Tensor], **basics):
        super().__init__(**basics)
        self.timestep_of_sigma = timestep_of_sigma  # the model's model_sampling.timestep
        self._steps: dict[tuple, StepTokens] = {}

    def keys_values(self, layer, device: torch.device, dtype: torch.dtype, *, sigma: float | None):
        """K' after the block's `norm_ip_k` and V' of `layer` (a `DitBlock`) at the step `sigma`, as
        `[2 (cond, uncond), T, H·D]` each (λ not folded in: the image-prompt attention also reads the image stream's
        own keys and values)."""
        step = self._step(sigma, device, dtype)
        if layer.number not in step.blocks:
            adapter_layer = self.adapter.model.layer(layer.number)
            with torch.no_grad():
                keys, values = adapter_layer(step.tokens, step.time)  # [2, T, H·D] each
                heads = keys.shape[-1] // adapter_layer.norm_ip_k.weight.shape[0]
                split = keys.view(*keys.shape[:2], heads, -1)  # [2, T, H, D]
                keys = adapter_layer.norm_ip_k(split).reshape(keys.shape)  # [2, T, H·D]
            step.blocks[layer.number] = (keys, values)
        return step.blocks[layer.number]

    def _step(self, sigma: float | None, device: torch.device, dtype: torch.dtype) -> StepTokens:
        if sigma is None:
            raise IPAdapterError(
                f"Apply IPAdapter: '{self.adapter.source}' needs the sampling step (its image-prompt tokens depend on "
                "the timestep), but the model was called without transformer_options 'sigmas'. Run it through a "
                "ComfyUI sampler."
            )
        step = self._steps.get((device, dtype))
        if step is None or step.sigma != sigma:
            step = self._project(sigma, device, dtype)
            self._steps[(device, dtype)] = step  # the previous step's tokens and K'/V' are dropped
        return step

    def _project(self, sigma: float, device: torch.device, dtype: torch.dtype) -> StepTokens:
        images = self.embeds.image_count
        both = torch.cat([self.embeds.positive, self.embeds.negative]).to(device=device, dtype=dtype)  # [2N, S, E]
        sigmas = torch.full((both.shape[0],), sigma, dtype=torch.float32, device=device)  # [2N]
        with torch.no_grad():
            tokens, time = self.adapter.model.image_proj(both, self.timestep_of_sigma(sigmas).float())  # [2N, T, C], [2N, W]
        tokens = tokens.reshape(2, images * tokens.shape[1], tokens.shape[2])  # [2, N·T, C]
        time = time.reshape(2, images, -1)[:, 0]  # [2, W]: one timestep, so one embedding per side
        return StepTokens(sigma, tokens, time)

    def keep_cached_only_on(self, device: torch.device) -> None:
        """Drop the tokens and K'/V' held on other devices (the model moved): memory is freed where it left."""
        self._steps = {key: value for key, value in self._steps.items() if is_same_device(key[0], device)}
