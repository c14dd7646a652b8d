"""What the DiT mechanisms' apply functions share about families: a model's blocks of one class, and the refusal of
an adapter file of another family."""

import torch

from .adapter import LoadedAdapter
from .errors import IPAdapterError


def blocks_of_class(diffusion_model: torch.nn.Module, attribute: str, block_class: type) -> list[torch.nn.Module] | None:
    """The blocks of `diffusion_model.<attribute>` when all are `block_class`, or None (a model of another kind)."""
    blocks = getattr(diffusion_model, attribute, None)
    if blocks is None or not all(isinstance(block, block_class) for block in blocks):
        return None
    return list(blocks)


def with_article(name: str) -> str:
    """"an SD1.5", "an SDXL", "an SD3" (read letter by letter), "a Flux"."""
    return f"{'an' if name.startswith('SD') else 'a'} {name}"


def check_family(
    adapter: LoadedAdapter, blocks: list | None, *, spec_type: type, model_kind: str, blocks_name: str, wanted: str, connect: str
) -> None:
    """The adapter file is of the mechanism's family (`spec_type`, for a `model_kind` model: `wanted` names its file)
    and the model has the mechanism's blocks (`blocks_name`; `connect` names the model to use); refused otherwise."""
    base = adapter.spec.base
    if not isinstance(adapter.spec, spec_type):
        raise IPAdapterError(
            f"'{adapter.source}' is {with_article(base)} IP-Adapter but it was applied to {with_article(model_kind)} "
            f"model. Load {wanted}, or apply this one to {with_article(base)} checkpoint."
        )
    if blocks is None:
        raise IPAdapterError(
            f"'{adapter.source}' is {with_article(base)} IP-Adapter but it was applied to a model that is not "
            f"{model_kind} (no {blocks_name}). Connect {connect}, or load an IP-Adapter made for this model."
        )
