"""`block_weights` on the UNet: a weight per transformer module, as a diffusers scale dict or in cubiq's index form.

- A diffusers scale dict, as JSON: what diffusers' `set_ip_adapter_scale` makes of it
  (`_maybe_expand_lora_scales(unet, [scale], default_scale=0.0)`). Keys "down", "mid", "up". A number for a part
  sets every module of it; `{"block_i": x}` sets every attention of down/up block i; a list sets them one by one
  (as many values as the block has attentions; a list of one value is repeated); a list for a whole part applies to
  each of its blocks; "mid" takes a number or a list of one. **Anything not named gets 0.** Stricter than diffusers:
  a block without attentions in this model (or a misspelt one) is refused, where diffusers ignores it.
- The index form `"3:1.0, 6:0.5"` (`block_weights.indexed_values`): cubiq's transformer index t (`blocks.py`), one
  weight for every cross-attention layer of that module; indexes not named get 0.

Every value is multiplied by `weight`. A blank text means "no per-block map" (None).
"""

import json
import math
from collections.abc import Sequence

from ..block_weights import PARTS, BlockWeightsProblem, indexed_values, json_object
from ..errors import IPAdapterError
from .blocks import TransformerModule, layout_name

LayerKey = tuple[str, int, int]


def parse_block_weights(text: str, modules: Sequence[TransformerModule], *, weight: float) -> dict[LayerKey, float] | None:
    """Every cross-attention layer's weight (`weight` × its module's value; 0 where not named), or None if blank."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        if stripped.startswith(("{", "[")):
            factors = scale_dict_factors(json_object(stripped), modules)
        else:
            factors = index_factors(stripped, modules)
    except BlockWeightsProblem as problem:
        raise IPAdapterError(f'block_weights "{text}": {problem}. {valid_examples(modules)}') from None
    return {layer.key: weight * factors[module.index] for module in modules for layer in module.layers}


def scale_dict_factors(scales: dict, modules: Sequence[TransformerModule]) -> dict[int, float]:
    """Module index → value, diffusers' expansion of a scale dict with default 0."""
    for key in scales:
        if key not in PARTS:
            raise BlockWeightsProblem(f'"{key}" is not a part of the UNet (the keys are "down", "mid" and "up")')
    factors = {module.index: 0.0 for module in modules}
    if "mid" in scales:
        middle = [module for module in modules if module.part == "mid"]
        if not middle:
            raise BlockWeightsProblem('this model has no "mid" block with attention')
        value = scales["mid"]
        factors[middle[0].index] = number(value[0] if isinstance(value, list) and len(value) == 1 else value, "mid")
    for part in ("down", "up"):
        if part not in scales:
            continue
        blocks = blocks_of_part(modules, part)
        value = scales[part]
        if isinstance(value, dict):
            named = {}
            for name, block_value in value.items():
                matching = [block for block in blocks if name == f"block_{block}"]
                if not matching:
                    raise BlockWeightsProblem(f'"{part}" has no "{name}" with attentions in this model')
                named[matching[0]] = block_value
        else:
            named = dict.fromkeys(blocks, value)
        for block, block_value in named.items():
            where = f"{part}.block_{block}"
            for module, factor in zip(blocks[block], per_attention(block_value, len(blocks[block]), where)):
                factors[module.index] = factor
    return factors


def blocks_of_part(modules: Sequence[TransformerModule], part: str) -> dict[int, list[TransformerModule]]:
    """diffusers block number → its modules in attention order, for "down" or "up"."""
    blocks: dict[int, list[TransformerModule]] = {}
    for module in sorted((module for module in modules if module.part == part), key=lambda module: module.attention):
        blocks.setdefault(module.block_number, []).append(module)
    return dict(sorted(blocks.items()))


def per_attention(value, count: int, where: str) -> list[float]:
    if not isinstance(value, list):
        return [number(value, where)] * count
    if len(value) == 1:
        return [number(value[0], where)] * count
    if len(value) != count:
        raise BlockWeightsProblem(f"{where} has {count} attentions, so its list needs {count} values (or one), not {len(value)}")
    return [number(item, where) for item in value]


def number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BlockWeightsProblem(f"the value for {where} must be a finite number, not {json.dumps(value)}")
    return float(value)


def index_factors(text: str, modules: Sequence[TransformerModule]) -> dict[int, float]:
    """Module index → value, from `"t:v, t:v"`."""
    return indexed_values(text, count=len(modules), what="transformer index")


def valid_examples(modules: Sequence[TransformerModule]) -> str:
    """How to write block_weights for this model: its blocks, a dict and an index string that are valid here."""
    layout = layout_name(modules)
    blocks = blocks_of_part(modules, "up") or blocks_of_part(modules, "down")
    first_block = next(iter(blocks.values()))
    style = first_block[1] if len(first_block) > 1 else first_block[0]  # SDXL: InstantStyle's style module
    values = [1.0 if module is style else 0.0 for module in first_block]
    dict_example = json.dumps({style.part: {f"block_{style.block_number}": values}})
    down_modules = [module for module in modules if module.part == "down"]
    index_example = f"{style.index}:1.0" + (f", {down_modules[-1].index}:0.5" if down_modules else "")
    return (
        f"Write a diffusers scale dict such as {dict_example} (the blocks of this {layout or 'UNet'} model, with "
        f"their attentions: {described_blocks(modules)}), or transformer indexes 0–{len(modules) - 1} with weights, "
        f'such as "{index_example}".'
    )


def described_blocks(modules: Sequence[TransformerModule]) -> str:
    """`"down": block_1 (2), block_2 (2); "mid"; "up": …`: a model's blocks with their numbers of attentions."""
    described = []
    for part in PARTS:
        if part == "mid" and any(module.part == "mid" for module in modules):
            described.append('"mid"')
        elif blocks := blocks_of_part(modules, part):
            described.append(f'"{part}": ' + ", ".join(f"block_{block} ({len(found)})" for block, found in blocks.items()))
    return "; ".join(described)
