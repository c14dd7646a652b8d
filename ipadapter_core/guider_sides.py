"""Which image tokens each chunk of a model call gets, and the sigma of the call: decided once per call.

ComfyUI's guiders evaluate the model through `calc_cond_batch(model, conds, x, sigma, model_options)`, where
`conds` is a list of conditionings; the model sees them batched in chunks, and `transformer_options
["cond_or_uncond"]` holds, per chunk, the *position* of its conditioning in that list, not a cond/uncond flag:

    CFGGuider (KSampler)            [positive, negative]            cfg = 1: [positive, None]
    BasicGuider                     [positive]
    DualCFGGuider (both styles)     [negative, middle (cond2), positive (cond1)]
    PerpNegGuider                   [positive, negative, empty]

The rule: a chunk gets the unconditional (negative-image) tokens when its conditioning is the guider's `negative`
or is marked `prompt_type: "negative"` (ComfyUI marks DualCFG's cond2 and PerpNeg's empty prompt so, as it does for
SDXL's aesthetic score); every other chunk gets the image prompt. A conditioning the guider does not hold is
placed by its position in ComfyUI's own [positive, negative] order: 1 is negative, any other position positive.
A call that names no positions at all (no `cond_or_uncond`: not a sampler's call) is refused (`chunk_sides`).

Two ComfyUI wrappers on the patched model find this: PREDICT_NOISE hands the guider's conds down, and
CALC_COND_BATCH names the side of every position of each `conds` list (the very lists the guider holds, found by
identity, or by the uuids of their entries when a caller copied them) and reads the sigma once, as a Python float.
Both travel in `transformer_options`, where every attention patch of the call finds them.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from .attention import COND, UNCOND
from .errors import IPAdapterError

WRAPPER_KEY = "decoupled_ipadapter"
GUIDER_CONDS_OPTION = "decoupled_ipadapter_guider_conds"
MODEL_CALL_OPTION = "decoupled_ipadapter_model_call"
NEGATIVE_NAME = "negative"  # the guider conds key of CFG-style negatives (CFGGuider, DualCFG, PerpNeg)


@dataclass(frozen=True)
class ModelCall:
    sides: tuple[int, ...]  # COND or UNCOND for each position of the call's conds list
    sigma: float | None  # the call's sigma (first batch row), None when ComfyUI gave none


def side_by_position(position: int) -> int:
    """ComfyUI's sampling_function order, for conditioning no guider names: [positive, negative]."""
    return UNCOND if position == 1 else COND


def conds_sides(conds: Sequence, guider_conds: dict | None) -> tuple[int, ...]:
    """The image-token side of every position of a `calc_cond_batch` conds list (entries: lists of cond dicts or None)."""
    guider_conds = {name: entries for name, entries in (guider_conds or {}).items() if entries is not None}
    name_of_list = {id(entries): name for name, entries in guider_conds.items()}
    holders: dict = {}
    for name, entries in guider_conds.items():
        for entry in entries:
            holders.setdefault(entry.get("uuid"), set()).add(name)
    # a uuid in two lists is an area copy ComfyUI made (samplers.create_cond_with_same_area_if_none): it names neither
    name_of_uuid = {uuid: next(iter(names)) for uuid, names in holders.items() if len(names) == 1}
    sides = []
    for position, entries in enumerate(conds):
        entries = entries or []
        name = name_of_list.get(id(entries))
        if name is None:  # a copy of the guider's list (context windows, a second model): found by its entries
            name = next((name_of_uuid[entry.get("uuid")] for entry in entries if entry.get("uuid") in name_of_uuid), None)
        if name == NEGATIVE_NAME or any(entry.get("prompt_type") == "negative" for entry in entries):
            sides.append(UNCOND)
        else:
            sides.append(COND if name is not None else side_by_position(position))
    return tuple(sides)


def chunk_sides(extra_options: dict) -> list[int]:
    """COND/UNCOND for each batch chunk of an attention call, from its `cond_or_uncond` positions.

    A call without them (not made by a ComfyUI sampler, which always names them) is refused: nothing says which rows
    are unconditional, and giving every row the image prompt would put it into the unconditional pass too."""
    positions = extra_options.get("cond_or_uncond")
    if not positions:
        raise IPAdapterError(
            "Apply IPAdapter: the model was called without transformer_options 'cond_or_uncond', so which batch rows "
            "are conditional and which unconditional is unknown. Run the patched model through a ComfyUI sampler, or "
            "pass cond_or_uncond (the conditioning position of each batch chunk: 0 positive, 1 negative)."
        )
    call = extra_options.get(MODEL_CALL_OPTION)
    known = call.sides if call is not None else ()
    return [known[position] if position < len(known) else side_by_position(position) for position in positions]


def call_sigma(extra_options: dict) -> float | None:
    """The sigma of this model call: read once per call by the CALC_COND_BATCH wrapper; read here (a device sync)
    only for a call made outside a sampler."""
    call = extra_options.get(MODEL_CALL_OPTION)
    if call is not None:
        return call.sigma
    sigmas = extra_options.get("sigmas")
    return None if sigmas is None else float(sigmas.reshape(-1)[0])


def with_transformer_option(model_options: dict, key: str, value) -> dict:
    """A shallow copy of `model_options` whose transformer_options also hold `key`; the original is unchanged."""
    return {**model_options, "transformer_options": {**model_options.get("transformer_options", {}), key: value}}


def hand_down_guider_conds(executor, x, timestep, model_options, seed=None):
    """PREDICT_NOISE wrapper: the guider (`executor.class_obj`) and its conds dict, for the calls below it."""
    guider_conds = getattr(executor.class_obj, "conds", None)
    return executor(x, timestep, with_transformer_option(model_options, GUIDER_CONDS_OPTION, guider_conds), seed)


def describe_model_call(executor, model, conds, x_in, timestep, model_options):
    """CALC_COND_BATCH wrapper: the side of every conds position and the sigma, read once for the whole call."""
    guider_conds = model_options.get("transformer_options", {}).get(GUIDER_CONDS_OPTION)
    call = ModelCall(sides=conds_sides(conds, guider_conds), sigma=float(timestep.reshape(-1)[0]))
    return executor(model, conds, x_in, timestep, with_transformer_option(model_options, MODEL_CALL_OPTION, call))


def add_pass_wrappers(model_patcher) -> None:
    """Put both wrappers on a ModelPatcher once (clones inherit them; stacked Apply nodes add none twice)."""
    from comfy.patcher_extension import WrappersMP

    for wrapper_type, wrapper in ((WrappersMP.PREDICT_NOISE, hand_down_guider_conds), (WrappersMP.CALC_COND_BATCH, describe_model_call)):
        if not model_patcher.get_wrappers(wrapper_type, WRAPPER_KEY):
            model_patcher.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, wrapper)
