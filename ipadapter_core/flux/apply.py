"""Putting an image prompt on a ComfyUI Flux model (XLabs: the double blocks; InstantX: the double and single
blocks): check that adapter, model and embeds fit, then patch a clone."""

import torch

from ..adapter import LoadedAdapter
from ..controls import ApplyOptions, LayerControl
from ..embeds import ImagePromptEmbeds
from ..errors import IPAdapterError
from ..families import fitting_dit_blocks
from ..guider_sides import add_pass_wrappers
from ..patch_protocol import placed_patch
from ..term import DitBlock, ImagePromptTerm, term_basics
from .block_weights import parse_double_block_weights
from .format import FLUX_FAMILY, FLUX_FILE
from .instantx_format import HEAD_DIM, INSTANTX_FLUX_FAMILY, INSTANTX_FLUX_FILE
from .patch import DoubleBlockPatch, SingleBlockPatch

def check_flux_sizes(adapter: LoadedAdapter, blocks: list[torch.nn.Module]) -> None:
    """The adapter has K'/V' for as many double blocks as the model, of the model's width; refused otherwise."""
    spec = adapter.spec
    hidden_sizes = {block.hidden_size for block in blocks}
    if len(blocks) != spec.double_blocks or hidden_sizes != {spec.hidden_size}:
        raise IPAdapterError(
            f"'{adapter.source}' has K'/V' for {spec.double_blocks} double blocks of width {spec.hidden_size}, but this "
            f"Flux model has {len(blocks)} of width {sorted(hidden_sizes)}. Use the adapter made for this model "
            f"(FLUX.1: 19 blocks of width 3072, {FLUX_FILE})."
        )


def apply_flux_image_prompt(
    model,
    adapter: LoadedAdapter,
    weights_patcher,
    embeds: ImagePromptEmbeds,
    options: ApplyOptions,
):
    """Return a clone of the ModelPatcher `model` whose double blocks also attend to the image prompt.

    λ is `weight`, or per double block `block_weights` ("i:v": weight × v, blocks not named get 0 and no patch);
    the other advanced options are refused. Several calls stack: every double block keeps one patch holding all
    terms. A `dit` replace patch set on a block by another pack is kept, with our image-prompt block as its original
    block (patch_protocol.py).
    """
    blocks = fitting_dit_blocks(
        model, adapter, embeds, options, family=FLUX_FAMILY, check_blocks=check_flux_sizes, takes_block_weights=True,
        takes='weight_type linear, embeds_scaling "V only", no mask, no composition embeds and composition_weight 1; '
        'per-block weights go in block_weights as double-block indexes with weights, such as "0:1.0, 5:0.5"',
    )  # fmt: skip
    per_block = parse_double_block_weights(options.block_weights, count=len(blocks), weight=float(options.weight))
    term = ImagePromptTerm(
        **term_basics(model, adapter, weights_patcher, embeds, options),
        controls=None if per_block is None else {DitBlock(index).key: LayerControl(weight=w) for index, w in per_block.items()},
    )
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for index, block in enumerate(blocks):
        patch = placed_patch(
            existing.get(("double_block", index)), term, acts=term.layer_weight(DitBlock(index)) != 0,
            new_patch=lambda base, index=index, block=block: DoubleBlockPatch(index=index, block=block, terms=(term,), base=base),
        )  # fmt: skip
        if patch is not None:
            patched.set_model_patch_replace(patch, "dit", "double_block", index)
    add_pass_wrappers(patched)  # which image tokens each chunk gets under every guider, and one sigma per call
    return patched



def check_instantx_flux_sizes(adapter: LoadedAdapter, blocks: list[torch.nn.Module], single_blocks: list[torch.nn.Module]) -> None:
    """The adapter has K'/V' for as many double and single blocks as the model, of the model's width and head width
    (the reference's K' norm is over 128 values); refused otherwise."""
    spec = adapter.spec
    every = [*blocks, *single_blocks]
    widths = {block.hidden_size for block in every}
    head_dims = {block.hidden_size // block.num_heads for block in every}
    if len(every) != spec.layers or widths != {spec.hidden_size} or head_dims != {HEAD_DIM}:
        raise IPAdapterError(
            f"'{adapter.source}' has K'/V' for {spec.layers} blocks of width {spec.hidden_size} (heads of {HEAD_DIM}), "
            f"but this Flux model has {len(blocks)} double and {len(single_blocks)} single blocks of width "
            f"{sorted(widths)} (heads of {sorted(head_dims)}). Use the adapter made for this model (FLUX.1-dev: 19 + 38 "
            f"blocks of width 3072, {INSTANTX_FLUX_FILE})."
        )


def apply_instantx_flux_image_prompt(
    model,
    adapter: LoadedAdapter,
    weights_patcher,
    embeds: ImagePromptEmbeds,
    options: ApplyOptions,
):
    """Return a clone of the ModelPatcher `model` whose double and single blocks also attend to the image prompt of
    the InstantX FLUX.1-dev IP-Adapter (inside their attention, blocks.py).

    λ is `weight`, or per block `block_weights` ("n:v" over the file's numbering, the double blocks 0..D-1 then the
    single blocks D..D+S-1: weight × v, blocks not named get 0 and no patch); the other advanced options are
    refused. Stacking and other packs' patches follow the same rule as the XLabs adapter (a double block holds the
    terms of both adapters in one patch).
    """
    blocks = fitting_dit_blocks(
        model, adapter, embeds, options, family=INSTANTX_FLUX_FAMILY, check_blocks=lambda adapter, blocks: None,
        takes_block_weights=True,
        takes='weight_type linear, embeds_scaling "V only", no mask, no composition embeds and composition_weight 1; '
        'per-block weights go in block_weights as block indexes (the double blocks, then the single blocks) with '
        'weights, such as "0:1.0, 20:0.5"',
    )  # fmt: skip
    single_blocks = list(model.get_model_object("diffusion_model").single_blocks)
    check_instantx_flux_sizes(adapter, blocks, single_blocks)
    layers = [DitBlock(number) for number in range(len(blocks))] + [
        DitBlock(len(blocks) + index, kind="single_block", index=index) for index in range(len(single_blocks))
    ]
    per_block = parse_double_block_weights(options.block_weights, count=len(layers), weight=float(options.weight), what="block")
    term = ImagePromptTerm(
        **term_basics(model, adapter, weights_patcher, embeds, options),
        controls=None if per_block is None else {layers[number].key: LayerControl(weight=w) for number, w in per_block.items()},
    )
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for layer, block in zip(layers, [*blocks, *single_blocks]):
        if layer.kind == "double_block":
            def new_patch(base, index=layer.number, block=block):
                return DoubleBlockPatch(index=index, block=block, terms=(term,), base=base)
        else:
            def new_patch(base, layer=layer, block=block):
                return SingleBlockPatch(index=layer.index, number=layer.number, block=block, terms=(term,), base=base)
        patch = placed_patch(existing.get(layer.key), term, acts=term.layer_weight(layer) != 0, new_patch=new_patch)
        if patch is not None:
            patched.set_model_patch_replace(patch, "dit", *layer.key)
    add_pass_wrappers(patched)  # which image tokens each chunk gets under every guider, and one sigma per call
    return patched
