"""`block_weights` text, what every family's parser shares: the index form `"i:v, j:u"`, the problem a parser
reports, and the check ComfyUI runs at queue time, before the model (and so its family) is known. The UNet's
parser (diffusers scale dicts and transformer indexes) is `unet/block_weights.py`, Flux's (double-block indexes)
`flux/block_weights.py`.
"""

import json
import math
import re

from .errors import IPAdapterError

PARTS = ("down", "mid", "up")  # the keys of a diffusers scale dict


class BlockWeightsProblem(Exception):
    """What is wrong with the text; each parser turns it into the full IPAdapterError, with examples for the model."""


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise BlockWeightsProblem(f"it is not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(value, dict):
        raise BlockWeightsProblem("it is JSON but not one dict (a list of dicts, one per adapter, is not used here)")
    return value


def indexed_values(text: str, *, count: int | None, what: str) -> dict[int, float]:
    """Index 0..count-1 → value from `"i:v, i:v"` (commas or new lines between items); indexes not named get 0.
    `count` None: any index (the model is not known yet), and only the named ones are returned."""
    factors = dict.fromkeys(range(count or 0), 0.0)
    given = set()
    for item in (item.strip() for item in re.split(r"[,\n]", text)):
        if not item:
            continue
        match = re.fullmatch(r"(\d+)\s*:\s*(\S+)", item)
        if match is None:
            raise BlockWeightsProblem(f'"{item}" is not "index:weight"')
        index = int(match[1])
        try:
            value = float(match[2])
        except ValueError:
            raise BlockWeightsProblem(f'"{item}" has no number after the colon') from None
        if not math.isfinite(value):
            raise BlockWeightsProblem(f'"{item}" is not a finite weight')
        if count is not None and index >= count:
            raise BlockWeightsProblem(f"this model has no {what} {index} (its indexes are 0–{count - 1})")
        if index in given:
            raise BlockWeightsProblem(f"index {index} is given twice")
        given.add(index)
        factors[index] = value
    return factors


def check_block_weights_text(text: str) -> None:
    """What can be checked before the model is known (ComfyUI's queue-time validation): the text is blank, a JSON
    dict of the parts "down", "mid", "up", or "index:weight" items. Which blocks exist is checked when the node runs."""
    stripped = text.strip()
    try:
        if not stripped:
            return
        if stripped.startswith(("{", "[")):
            for key in json_object(stripped):
                if key not in PARTS:
                    raise BlockWeightsProblem(f'"{key}" is not a part of the UNet (the keys are "down", "mid" and "up")')
        else:
            indexed_values(stripped, count=None, what="index")
    except BlockWeightsProblem as problem:
        raise IPAdapterError(
            f'block_weights "{text}": {problem}. Write a diffusers scale dict such as {{"up": {{"block_0": [0.0, 1.0, '
            '0.0]}}} or indexes with weights such as "3:1.0, 6:0.5", or leave it empty.'
        ) from None
