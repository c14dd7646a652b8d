"""Putting an image prompt on a ComfyUI Flux model: check that adapter, model and embeds fit, then patch a clone."""

import torch

from ..adapter import LoadedAdapter
from ..embeds import ImagePromptEmbeds, check_embeds_fit
from ..errors import IPAdapterError
from ..schedule import sigma_range
from ..unet.passes import add_pass_wrappers
from ..unet.patch import ImagePromptTerm
from .flux_format import FluxAdapterSpec
from .patch import DoubleBlockPatch

FLUX_FILE = "ip_adapter.safetensors of XLabs-AI/flux-ip-adapter (or flux-ip-adapter-v2)"


def flux_double_blocks(diffusion_model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The double-stream blocks of a ComfyUI Flux transformer, or None for a model of another kind."""
    from comfy.ldm.flux.layers import DoubleStreamBlock

    blocks = getattr(diffusion_model, "double_blocks", None)
    if blocks is None or not all(isinstance(block, DoubleStreamBlock) for block in blocks):
        return None
    return list(blocks)


def is_dit_application(model, adapter: LoadedAdapter) -> bool:
    """Whether Apply takes the DiT path: a Flux adapter file, or a Flux model (then a UNet file is refused here)."""
    return isinstance(adapter.spec, FluxAdapterSpec) or flux_double_blocks(model.get_model_object("diffusion_model")) is not None


def check_flux_fit(adapter: LoadedAdapter, blocks: list[torch.nn.Module] | None) -> None:
    spec = adapter.spec
    if not isinstance(spec, FluxAdapterSpec):
        raise IPAdapterError(
            f"'{adapter.source}' is an {spec.base} IP-Adapter but it was applied to a Flux model. Load a Flux "
            f"IP-Adapter ({FLUX_FILE}), or apply this one to an {spec.base} checkpoint."
        )
    if blocks is None:
        raise IPAdapterError(
            f"'{adapter.source}' is a Flux IP-Adapter but it was applied to a model that is not Flux (no double-stream "
            "blocks). Connect a FLUX.1 model (dev or schnell), or load an IP-Adapter made for this model."
        )
    hidden_sizes = {block.hidden_size for block in blocks}
    if len(blocks) != spec.double_blocks or hidden_sizes != {spec.hidden_size}:
        raise IPAdapterError(
            f"'{adapter.source}' has K'/V' for {spec.double_blocks} double blocks of width {spec.hidden_size}, but this "
            f"Flux model has {len(blocks)} of width {sorted(hidden_sizes)}. Use the adapter made for this model "
            f"(FLUX.1: 19 blocks of width 3072, {FLUX_FILE})."
        )


def apply_flux_image_prompt(model, adapter: LoadedAdapter, weights_patcher, embeds: ImagePromptEmbeds, *, weight: float, start_at: float, end_at: float):
    """Return a clone of the ModelPatcher `model` whose double blocks also attend to the image prompt.

    Several calls stack: every double block keeps one patch holding all terms. A `dit` replace patch set on a block
    by another pack is kept and runs in place of the original block, inside ours.
    """
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise IPAdapterError(f"start_at ({start_at}) and end_at ({end_at}) must satisfy 0 <= start_at <= end_at <= 1.")
    blocks = flux_double_blocks(model.get_model_object("diffusion_model"))
    check_flux_fit(adapter, blocks)
    check_embeds_fit(embeds, adapter.spec, adapter.source)
    sampling = model.get_model_object("model_sampling")
    term = ImagePromptTerm(
        adapter=adapter,
        weights_patcher=weights_patcher,
        embeds=embeds,
        weight=float(weight),
        sigmas=sigma_range(sampling.percent_to_sigma, start_at=start_at, end_at=end_at),
    )
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for index, block in enumerate(blocks):
        key = ("double_block", index)
        previous = existing.get(key)
        if isinstance(previous, DoubleBlockPatch):
            new_patch = previous.stacked_with(term)
        else:
            new_patch = DoubleBlockPatch(index=index, block=block, terms=(term,), base=previous)
        patched.set_model_patch_replace(new_patch, "dit", "double_block", index)
    add_pass_wrappers(patched)  # which image tokens each chunk gets under every guider, and one sigma per call
    return patched

