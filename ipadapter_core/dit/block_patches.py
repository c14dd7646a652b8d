"""What the DiT patches share: the step-range check, one replace patch per block (stacking into ours, keeping
another pack's), and ComfyUI's patch protocol for patches holding image-prompt terms."""

import torch

from ..errors import IPAdapterError


def check_step_range(*, start_at: float, end_at: float) -> None:
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise IPAdapterError(f"start_at ({start_at}) and end_at ({end_at}) must satisfy 0 <= start_at <= end_at <= 1.")


def patch_every_block(model, blocks: list[torch.nn.Module], term, patch_class):
    """A clone of `model` whose `("double_block", i)` dit replace patch holds `term`: added to our patch already
    there (stacked Apply nodes), or wrapping another pack's patch (`base`)."""
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for index, block in enumerate(blocks):
        previous = existing.get(("double_block", index))
        if isinstance(previous, patch_class):
            new_patch = previous.stacked_with(term)
        else:
            new_patch = patch_class(index=index, block=block, terms=(term,), base=previous)
        patched.set_model_patch_replace(new_patch, "dit", "double_block", index)
    return patched


class TermPatchProtocol:
    """`to(device)` drops the terms' caches on other devices, `models()` hands their adapter weights to ComfyUI's
    memory management, `__deepcopy__` returns the patch itself (ModelPatcher.clone copies no weights)."""

    terms: tuple
    base: object

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
