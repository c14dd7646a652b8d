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


@pytest.mark.parametrize("positions", [[0], [1, 0], [2], [2, 1, 0], [0, 1, 2], [3, 0, 1, 5], [7, 7]])
def test_any_cond_or_uncond_list_gets_sides(positions):
    dual = ModelCall(sides=(UNCOND, UNCOND, COND), sigma=1.0)
    known = chunk_sides({"cond_or_uncond": positions, MODEL_CALL_OPTION: dual})
    unknown = chunk_sides({"cond_or_uncond": positions})
    expected_length = max(len(positions), 1)
    assert len(known) == len(unknown) == expected_length
    for position, side in zip(positions, known):
        assert side == (dual.sides[position] if position < 3 else (UNCOND if position == 1 else COND))


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


@pytest.mark.parametrize("positions", [[2], [2, 1, 0], [3, 0, 1, 5], [0, 0]])
def test_the_patch_runs_for_any_chunk_list(patched, positions):
    model, patched_model = patched
    key = ("input", 1, 0)
    q, k, v, options = helpers.layer_inputs(model, key)
    rows = 2 * len(positions)
    q, k, v = (tensor[:1].expand(rows, -1, -1) for tensor in (q, k, v))
    options = {**options, "cond_or_uncond": positions, "sigmas": torch.ones(2)}
    out = helpers.call_patch(helpers.replace_patch(patched_model, key), q, k, v, options)
    plain = helpers.call_patch(None, q, k, v, options)
    assert out.shape == q.shape and out.isfinite().all()
    assert (out - plain).abs().max() > 1e-4


def test_the_patch_refuses_a_batch_that_does_not_split_into_its_chunks(patched):
    model, patched_model = patched
    key = ("input", 1, 0)
    q, k, v, options = helpers.layer_inputs(model, key)
    q, k, v = (torch.cat([tensor, tensor[:1]]) for tensor in (q, k, v))  # 3 rows for the chunks [1, 0]
    with pytest.raises(IPAdapterError, match="Apply IPAdapter: .*3 batch rows.*2 conditioning chunks"):
        helpers.call_patch(helpers.replace_patch(patched_model, key), q, k, v, options)
