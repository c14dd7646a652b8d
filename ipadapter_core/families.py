"""What the DiT mechanisms share about families: a family's blocks in a ComfyUI model, the refusal of an adapter file
or a model of another family, and the checks before a mechanism patches (blocks, options, embeds)."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .controls import ApplyOptions
from .embeds import ImagePromptEmbeds, check_embeds_fit
from .errors import IPAdapterError
from .refused_options import refuse_unet_options

if TYPE_CHECKING:  # adapter.py imports the rooms' formats, which import this module
    from .adapter import LoadedAdapter


@dataclass(frozen=True)
class DitFamily:
    """One DiT mechanism's family: where its blocks are in a ComfyUI model, how refusals name its files and models."""

    model_kind: str  # "Flux": the model, in refusals
    adapter_name: str  # "SD3.5": the adapter, in the refusal of options it does not take
    blocks_attribute: str  # "double_blocks": the diffusion model's attribute that holds the blocks
    block_class: str  # "comfy.ldm.flux.layers.DoubleStreamBlock": every block's class, imported at call time
    blocks_name: str  # "double-stream blocks": the blocks, in refusals
    spec_type: type  # the adapter spec of the family's files
    wanted: str  # the adapter file to load, in refusals
    connect: str  # the model to connect, in refusals


def family_blocks(diffusion_model: torch.nn.Module, family: DitFamily) -> list[torch.nn.Module] | None:
    """The family's blocks of a ComfyUI diffusion model when all are of its class, or None (a model of another kind)."""
    module_name, _, class_name = family.block_class.rpartition(".")
    block_class = getattr(importlib.import_module(module_name), class_name)
    blocks = getattr(diffusion_model, family.blocks_attribute, None)
    if blocks is None or not all(isinstance(block, block_class) for block in blocks):
        return None
    return list(blocks)


def fitting_family_blocks(model, adapter: "LoadedAdapter", family: DitFamily) -> list[torch.nn.Module]:
    """The family's blocks of the ModelPatcher `model`, once the adapter file is known to be of the family and the
    model to have them; refused otherwise, naming the family and what to load or connect."""
    blocks = family_blocks(model.get_model_object("diffusion_model"), family)
    base = adapter.spec.base
    if not isinstance(adapter.spec, family.spec_type):
        raise IPAdapterError(
            f"'{adapter.source}' is {with_article(base)} IP-Adapter but it was applied to "
            f"{with_article(family.model_kind)} model. Load {family.wanted}, or apply this one to {with_article(base)} "
            "checkpoint."
        )
    if blocks is None:
        raise IPAdapterError(
            f"'{adapter.source}' is {with_article(base)} IP-Adapter but it was applied to a model that is not "
            f"{family.model_kind} (no {family.blocks_name}). Connect {family.connect}, or load an IP-Adapter made for "
            "this model."
        )
    return blocks


def fitting_dit_blocks(
    model,
    adapter: "LoadedAdapter",
    embeds: ImagePromptEmbeds,
    options: ApplyOptions,
    *,
    family: DitFamily,
    check_blocks: Callable[["LoadedAdapter", list[torch.nn.Module]], None],
    takes_block_weights: bool,
    takes: str,
) -> list[torch.nn.Module]:
    """The family's blocks of the ModelPatcher `model` once all fits: file and model of the family
    (`fitting_family_blocks`), blocks the adapter was made for (`check_blocks`, refusing otherwise), options the
    mechanism takes (`refuse_unet_options`: `takes` says what it takes), and embeds the adapter reads."""
    blocks = fitting_family_blocks(model, adapter, family)
    check_blocks(adapter, blocks)
    refuse_unet_options(family.adapter_name, options, takes_block_weights=takes_block_weights, takes=takes)
    check_embeds_fit(embeds, adapter.spec, adapter.source)
    return blocks


def with_article(name: str) -> str:
    """"an SD1.5", "an SDXL", "an SD3" (read letter by letter), "a Flux"."""
    return f"{'an' if name.startswith('SD') else 'a'} {name}"
