"""`block_weights` on Flux: `"i:v, j:u"` over the double blocks (`block_weights.indexed_values`)."""

from ..block_weights import BlockWeightsProblem, indexed_values
from ..errors import IPAdapterError


def parse_double_block_weights(text: str, *, count: int, weight: float) -> dict[int, float] | None:
    """Flux: `"i:v, j:u"` over the double blocks 0..count-1 (weight × v; blocks not named get 0), or None if blank."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        if stripped.startswith(("{", "[")):
            raise BlockWeightsProblem("a diffusers scale dict names UNet blocks, and a Flux model has none")
        factors = indexed_values(stripped, count=count, what="double block")
    except BlockWeightsProblem as problem:
        raise IPAdapterError(
            f'block_weights "{text}": {problem}. On Flux, give double-block indexes 0–{count - 1} with weights, such '
            'as "0:1.0, 5:0.5", or leave it empty.'
        ) from None
    return {index: weight * factor for index, factor in factors.items()}
