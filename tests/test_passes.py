"""Which tokens each chunk gets, for any chunk list: the conds lists of ComfyUI's guiders (by identity, by uuid for
copies, by prompt_type, by position when no guider names them), `cond_or_uncond` positions of any value, and
batches that do not split into the chunks (a clear error, never a silent reshape)."""

import uuid

import comfy_sampling_helpers as helpers
import pytest
import torch
from comfy_sampling_helpers import apply, image_embeds, linear_adapter
from tiny_models import tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.attention import COND, UNCOND, rows_for_batch
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.guider_sides import MODEL_CALL_OPTION, ModelCall, chunk_sides, conds_sides


def conditioning(*, negative_prompt_type: bool = False) -> list[dict]:
    entry = {"uuid": uuid.uuid4(), "model_conds": {}}
    if negative_prompt_type:
        entry["prompt_type"] = "negative"  # what node_helpers.conditioning_set_values puts on DualCFG's cond2, PerpNeg's empty
    return [entry]


def copied(entries: list[dict]) -> list[dict]:
    """A new list of copied entries, as context windows or a second model's process_conds make (uuids kept)."""
    return [dict(entry) for entry in entries]


def test_the_conds_lists_of_comfyuis_guiders():
    positive, negative = conditioning(), conditioning()
    middle, empty = conditioning(negative_prompt_type=True), conditioning(negative_prompt_type=True)
    cfg = {"positive": positive, "negative": negative}
    assert conds_sides([positive, negative], cfg) == (COND, UNCOND)  # CFGGuider, KSampler
    assert conds_sides([positive], {"positive": positive}) == (COND,)  # BasicGuider
    dual = {"positive": positive, "middle": middle, "negative": negative}
    assert conds_sides([negative, middle, positive], dual) == (UNCOND, UNCOND, COND)  # DualCFGGuider, both styles
    perp_neg = {"positive": positive, "empty_negative_prompt": empty, "negative": negative}
    assert conds_sides([positive, negative, empty], perp_neg) == (COND, UNCOND, UNCOND)  # PerpNegGuider
    assert conds_sides([copied(negative), copied(positive)], cfg) == (UNCOND, COND), "copies are found by uuid"


def test_an_area_copy_shares_a_uuid_and_names_no_list():
    """process_conds copies a positive area cond into the negative list (same uuid): a copied negative list is still
    found by its own first entry, and a list holding only the shared uuid falls back to its position."""
    positive = conditioning()
    positive[0]["area"] = (4, 4, 0, 0)
    negative = conditioning() + [dict(positive[0])]
    guider = {"positive": positive, "negative": negative}
    assert conds_sides([copied(positive), copied(negative)], guider) == (COND, UNCOND)
    assert conds_sides([[dict(positive[0])], [dict(positive[0])]], guider) == (COND, UNCOND)


def test_without_a_guider_the_position_decides_as_in_comfyuis_sampling_function():
    assert conds_sides([conditioning(), conditioning()], None) == (COND, UNCOND)
    assert conds_sides([conditioning(), conditioning(), conditioning()], None) == (COND, UNCOND, COND)
    assert conds_sides([conditioning(negative_prompt_type=True)], None) == (UNCOND,)
    assert conds_sides([None, conditioning()], {}) == (COND, UNCOND)


C, U = COND, UNCOND
DUAL_CFG_CALL = ModelCall(sides=(U, U, C), sigma=1.0)  # DualCFGGuider's conds: [negative, middle, positive]
BASIC_CALL = ModelCall(sides=(C,), sigma=1.0)  # BasicGuider's conds: [positive]


@pytest.mark.parametrize(
    ("positions", "call", "expected"),
    [
        ([0], DUAL_CFG_CALL, [U]),
        ([1, 0], DUAL_CFG_CALL, [U, U]),
        ([2, 1, 0], DUAL_CFG_CALL, [C, U, U]),
        ([3, 0, 1, 5], DUAL_CFG_CALL, [C, U, U, C]),  # 3 and 5: no conds there, placed as ComfyUI's [positive, negative]
        ([0, 1], BASIC_CALL, [C, U]),  # position 1 beyond the guider's list: ComfyUI's negative
        ([7, 7], BASIC_CALL, [C, C]),
        ([0], None, [C]),  # no wrapper described the call: ComfyUI's [positive, negative] order
        ([1, 0], None, [U, C]),
        ([2, 1, 0], None, [C, U, C]),
        ([3, 0, 1, 5], None, [C, C, U, C]),
    ],
)
def test_any_cond_or_uncond_list_gets_sides(positions, call, expected):
    options = {"cond_or_uncond": positions} | ({MODEL_CALL_OPTION: call} if call is not None else {})
    assert chunk_sides(options) == expected


def test_rows_follow_their_chunks_and_uneven_batches_fail_clearly():
    by_side = torch.stack([torch.full((3, 5), float(COND)), torch.full((3, 5), float(UNCOND))])  # [2, T, W]
    rows = rows_for_batch(by_side, [UNCOND, COND, UNCOND], 6)  # [6, T, W]: chunks of 2 rows
    assert rows.shape == (6, 3, 5)
    assert rows[:, 0, 0].tolist() == [UNCOND, UNCOND, COND, COND, UNCOND, UNCOND]
    with pytest.raises(IPAdapterError, match=r"7 batch rows.*3 conditioning chunks.*cond_or_uncond"):
        rows_for_batch(by_side, [UNCOND, COND, UNCOND], 7)


@pytest.fixture(scope="module")
def patched(comfy_host):
    model = tiny_comfy_model("SD1.5", seed=2)
    return model, apply(model, linear_adapter(model, seed=4), image_embeds(5))


@pytest.mark.parametrize(
    ("positions", "expected"), [([2], [C]), ([2, 1, 0], [C, U, C]), ([3, 0, 1, 5], [C, C, U, C]), ([0, 0], [C, C])]
)
def test_each_chunk_of_any_chunk_list_gets_its_sides_image_prompt(patched, positions, expected):
    """Every chunk's rows equal the rows of a plain CFG call ([1, 0]) on the same input for its side."""
    model, patched_model = patched
    key = ("input", 1, 0)
    patch = helpers.replace_patch(patched_model, key)
    q, k, v, options = helpers.layer_inputs(model, key)
    cfg_out = helpers.call_patch(patch, q, k, v, options)  # rows: uncond, cond
    of_side = {U: cfg_out[:1], C: cfg_out[1:]}
    plain = helpers.call_patch(None, q, k, v, options)
    assert (of_side[C] - of_side[U]).abs().max() > 1e-3 and (of_side[C] - plain[1:]).abs().max() > 1e-3

    rows_per_chunk = 2
    input_row_of_side = {U: 0, C: 1}
    rows = [input_row_of_side[side] for side in expected for _ in range(rows_per_chunk)]
    q, k, v = (tensor[rows] for tensor in (q, k, v))
    out = helpers.call_patch(patch, q, k, v, {**options, "cond_or_uncond": positions, "sigmas": torch.ones(2)})
    for chunk, side in enumerate(expected):
        rows = out[chunk * rows_per_chunk : (chunk + 1) * rows_per_chunk]
        torch.testing.assert_close(rows, of_side[side].expand_as(rows), rtol=1e-5, atol=1e-6)


def test_the_patch_refuses_a_batch_that_does_not_split_into_its_chunks(patched):
    model, patched_model = patched
    key = ("input", 1, 0)
    q, k, v, options = helpers.layer_inputs(model, key)
    q, k, v = (torch.cat([tensor, tensor[:1]]) for tensor in (q, k, v))  # 3 rows for the chunks [1, 0]
    with pytest.raises(IPAdapterError, match="Apply IPAdapter: .*3 batch rows.*2 conditioning chunks"):
        helpers.call_patch(helpers.replace_patch(patched_model, key), q, k, v, options)
