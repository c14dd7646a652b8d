"""What ComfyUI asks of the patch objects that hold image-prompt terms, in every mechanism (unet/, flux/, mmdit/).

- `to(device)` when the model is loaded or offloaded: each term drops its caches on other devices, and another
  pack's patch kept with ours (`base`) is moved too.
- `models()`: the ModelPatchers of the adapter weights (and the kept patch's), so ComfyUI's memory management loads
  them with the diffusion model.
- `__deepcopy__` returns the patch itself: `ModelPatcher.clone()` deep-copies model_options on some hosts, and a
  clone must copy no weights.

Another pack's patch on the same layer or block is kept, never dropped, and it stays the outer one: ours is what it
calls for the layer's own computation. A `dit` block patch (Flux, SD3) is called with our image-prompt block as its
`original_block`; an attn2 patch (UNet), which has no original to call, computes the text attention and our terms
are added to its output. Stacking follows `placed_patch`.
"""

from collections.abc import Callable

import torch


class TermsPatch:
    terms: tuple  # the ImagePromptTerms, one per Apply node stacked on the model
    base: object  # another pack's patch kept with ours (see below), or None

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


def placed_patch(previous, term, *, acts: bool, new_patch: Callable[[object], TermsPatch]) -> TermsPatch | None:
    """The patch of one layer or block once `term` is applied, the same rule in every mechanism: our patch already
    there takes the term too (stacked Apply nodes: one patch holds all terms); otherwise, where the term acts, a new
    patch of ours keeps `previous` (another pack's patch, or None) as its `base`; None where nothing of ours is there
    and the term does not act (the layer stays as it was)."""
    if is_terms_patch(previous):
        return previous.stacked_with(term)
    return new_patch(previous) if acts else None


def is_same_device(cached_on: torch.device, device: torch.device) -> bool:
    """Whether caches on `cached_on` (a tensor's device, which names its index: `mps:0`) are on `device`, which
    ComfyUI may name without one (`mps`, `cuda`: the current device of that type)."""
    return cached_on.type == device.type and (device.index is None or cached_on.index in (None, device.index))


def is_terms_patch(patch) -> bool:
    """Ours (any mechanism's), also when the pack was imported twice under two module names (so no isinstance)."""
    return isinstance(getattr(patch, "terms", None), tuple) and hasattr(patch, "stacked_with")
