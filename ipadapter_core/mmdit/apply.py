"""Putting an image prompt on a ComfyUI SD3 (MMDiT) model: check that adapter, model and embeds fit, then patch a
clone."""

import torch

from ..adapter import LoadedAdapter
from ..controls import ApplyOptions
from ..embeds import ImagePromptEmbeds
from ..errors import IPAdapterError
from ..families import fitting_dit_blocks
from ..guider_sides import add_pass_wrappers
from ..patch_protocol import placed_patch
from ..term import term_basics
from .format import SD3_FAMILY, SD3_FILE
from .patch import JointBlockPatch
from .term import TimestepImagePromptTerm

def check_sd3_blocks(adapter: LoadedAdapter, blocks: list[torch.nn.Module]) -> None:
    """The model's joint blocks are SD3.5 Large's kind, as many and as wide as the adapter's; refused otherwise."""
    spec = adapter.spec
    if any(block.x_block.x_block_self_attn or block.x_block.scale_mod_only for block in blocks):
        raise IPAdapterError(
            f"'{adapter.source}' was made for SD3.5 Large, but this SD3 model has blocks of another kind (MMDiT-X "
            "self-attention, as in SD3.5 Medium). Connect Stable Diffusion 3.5 Large."
        )
    widths = {block.x_block.attn.num_heads * block.x_block.attn.head_dim for block in blocks}
    head_dims = {block.x_block.attn.head_dim for block in blocks}
    if len(blocks) != spec.joint_blocks or widths != {spec.hidden_size} or head_dims != {spec.head_dim}:
        raise IPAdapterError(
            f"'{adapter.source}' has image-prompt weights for {spec.joint_blocks} joint blocks of width "
            f"{spec.hidden_size}, but this SD3 model has {len(blocks)} of width {sorted(widths)}. Use the adapter made "
            f"for this model (SD3.5 Large: 38 blocks of width 2432, {SD3_FILE})."
        )


def patch_every_joint_block(model, blocks: list[torch.nn.Module], term: TimestepImagePromptTerm):
    """A clone of `model` whose `("double_block", i)` dit replace patch holds `term`: added to our patch already
    there (stacked Apply nodes), or wrapping another pack's patch (`base`); at λ = 0 a block without our patch
    gets none."""
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for index, block in enumerate(blocks):
        patch = placed_patch(
            existing.get(("double_block", index)), term, acts=term.weight != 0,
            new_patch=lambda base, index=index, block=block: JointBlockPatch(index=index, block=block, terms=(term,), base=base),
        )  # fmt: skip
        if patch is not None:
            patched.set_model_patch_replace(patch, "dit", "double_block", index)
    return patched


def apply_sd3_image_prompt(
    model,
    adapter: LoadedAdapter,
    weights_patcher,
    embeds: ImagePromptEmbeds,
    options: ApplyOptions,
):
    """Return a clone of the ModelPatcher `model` whose joint blocks also attend to the image prompt (λ = weight;
    the advanced options are refused). At λ = 0 no block is patched.

    Several calls stack: every joint block keeps one patch holding all terms. A `dit` replace patch set on a block
    by another pack is kept, with our image-prompt block as its original block.
    """
    blocks = fitting_dit_blocks(
        model, adapter, embeds, options, family=SD3_FAMILY, check_blocks=check_sd3_blocks, takes_block_weights=False,
        takes='weight_type linear, embeds_scaling "V only", empty block_weights, no mask, no composition embeds and '
        "composition_weight 1",
    )  # fmt: skip
    term = TimestepImagePromptTerm(
        **term_basics(model, adapter, weights_patcher, embeds, options),
        timestep_of_sigma=model.get_model_object("model_sampling").timestep,
    )
    patched = patch_every_joint_block(model, blocks, term)
    add_pass_wrappers(patched)  # which image tokens each chunk gets under every guider, and one sigma per call
    return patched
