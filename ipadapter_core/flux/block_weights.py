"""`block_weights` on Flux: `"i:v, j:u"` over the double blocks (XLabs), or over the double then the single blocks
(InstantX: the numbering of its file) (`block_weights.indexed_values`)."""

from ..block_weights import BlockWeightsProblem, indexed_values
from ..errors import IPAdapterError


def parse_double_block_weights(text: str, *, count: int, weight: float, what: str = "double block") -> dict[int, float] | None:
    """Flux: `"i:v, j:u"` over the blocks 0..count-1 (weight × v; blocks not named get 0), or None if blank;
    `what` names the blocks counted."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        if stripped.startswith(("{", "[")):
            raise BlockWeightsProblem("a diffusers scale dict names UNet blocks, and a Flux model has none")
        factors = indexed_values(stripped, count=count, what=what)
    except BlockWeightsProblem as problem:
        indexes = what.replace(" ", "-")
        raise IPAdapterError(
            f'block_weights "{text}": {problem}. On Flux, give {indexes} indexes 0–{count - 1} with weights, such '
            'as "0:1.0, 5:0.5", or leave it empty.'
        ) from None
    return {index: weight * factor for index, factor in factors.items()}
