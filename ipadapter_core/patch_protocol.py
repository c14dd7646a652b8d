"""What ComfyUI asks of the patch objects that hold image-prompt terms, in every mechanism (unet/, flux/, mmdit/).

- `to(device)` when the model is loaded or offloaded: each term drops its caches on other devices, and another
  pack's patch kept inside ours (`base`) is moved too.
- `models()`: the ModelPatchers of the adapter weights (and the kept patch's), so ComfyUI's memory management loads
  them with the diffusion model.
- `__deepcopy__` returns the patch itself: `ModelPatcher.clone()` deep-copies model_options on some hosts, and a
  clone must copy no weights.
"""

import torch


class TermsPatch:
    terms: tuple  # the ImagePromptTerms, one per Apply node stacked on the model
    base: object  # another pack's patch kept inside ours, or None

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.device):
            for term in self.terms:
                term.keep_cached_only_on(device_or_dtype)
        if hasattr(self.base, "to"):
            self.base = self.base.to(device_or_dtype)
        return self

    def models(self) -> list:
        base_models = self.base.models() if hasattr(self.base, "models") else []
        return [*{id(term.weights_patcher): term.weights_patcher for term in self.terms}.values(), *base_models]

    def __deepcopy__(self, memo):
        return self


def is_same_device(cached_on: torch.device, device: torch.device) -> bool:
    """Whether caches on `cached_on` (a tensor's device, which names its index: `mps:0`) are on `device`, which
    ComfyUI may name without one (`mps`, `cuda`: the current device of that type)."""
    return cached_on.type == device.type and (device.index is None or cached_on.index in (None, device.index))


def is_terms_patch(patch) -> bool:
    """Ours (any mechanism's), also when the pack was imported twice under two module names (so no isinstance)."""
    return isinstance(getattr(patch, "terms", None), tuple) and hasattr(patch, "stacked_with")
