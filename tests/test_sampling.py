"""The patch inside ComfyUI's real samplers: λ = 0 and out-of-range steps are exact no-ops, the prompt acts in exactly
the steps of its start/end range (and computes nothing in the others), cfg = 1 and batches get the right tokens,
stacking sums each adapter's own softmax, another pack's patch is called through, the image projection and K'/V'
are computed once (not per layer or step), and clones share the adapter weights."""

import copy

import comfy_sampling_helpers as helpers
import pytest
import torch
from comfy_sampling_helpers import apply, close, image_embeds, linear_adapter, unconditional_only
from tiny_models import tiny_comfy_model

from decoupled_ipadapter.models.adapter import DecoupledKeyValue


@pytest.fixture(scope="module")
def sd15(comfy_host):
    return tiny_comfy_model("SD1.5", seed=3)


def test_weight_zero_is_exactly_the_plain_model(sd15):
    managed = linear_adapter(sd15, seed=1)
    plain = helpers.sample(sd15, cfg=3.0)
    assert torch.equal(helpers.sample(apply(sd15, managed, image_embeds(1), weight=0.0), cfg=3.0), plain)
    assert (helpers.sample(apply(sd15, managed, image_embeds(1), weight=1.0), cfg=3.0) - plain).abs().max() > 1e-3


def test_steps_outside_the_range_are_exactly_the_plain_model(sd15):
    managed = linear_adapter(sd15, seed=1)
    plain = helpers.sample(sd15, cfg=3.0, steps=4)
    never = apply(sd15, managed, image_embeds(1), start_at=1.0, end_at=1.0)  # only sigma 0, which is never evaluated
    assert torch.equal(helpers.sample(never, cfg=3.0, steps=4), plain)


def predictions_at_every_step(model, *, scheduler: str, steps: int) -> list[torch.Tensor]:
    """The denoised prediction (cfg 3) at each sigma of the schedule, all at the same input: a sampler that only
    evaluates the model, so a step's prediction depends on that step alone."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import CFGGuider

    predictions = []

    def evaluate_only(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        for sigma in sigmas[:-1]:
            predictions.append(model_k(x, sigma * x.new_ones([x.shape[0]]), **(extra_args or {})))
        return x

    width = helpers.text_width(model)
    guider = CFGGuider.execute(
        model=model, positive=helpers.text_conditioning(1, width), negative=helpers.text_conditioning(2, width), cfg=3.0
    ).result[0]
    helpers.custom_sample(guider, steps=steps, scheduler=scheduler, sampler=comfy.samplers.KSAMPLER(evaluate_only))
    return predictions


@pytest.mark.parametrize("scheduler", ["normal", "karras"])
@pytest.mark.parametrize("start_at, end_at", [(0.0, 0.3), (0.3, 0.7), (0.5, 1.0), (0.2, 0.9), (0.0, 1.0)])
def test_the_prompt_acts_in_exactly_the_steps_of_its_range_and_computes_nothing_in_the_others(
    sd15, monkeypatch, scheduler, start_at, end_at
):
    """A step acts iff sigma_end <= sigma <= sigma_start (ControlNet's rule, percent_to_sigma); the other steps are
    the plain model to the bit and run no image attention; every layer takes the step's one decision."""
    import comfy.samplers

    from decoupled_ipadapter.ipadapter_core import guider_sides
    from decoupled_ipadapter.ipadapter_core.unet import patch

    steps = 8
    model_sampling = sd15.get_model_object("model_sampling")
    sigmas = [float(sigma) for sigma in comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)[:-1]]
    start, end = float(model_sampling.percent_to_sigma(start_at)), float(model_sampling.percent_to_sigma(end_at))
    expected = [index for index, sigma in enumerate(sigmas) if end <= sigma <= start]
    assert 0 < len(expected) <= steps

    attention_sigmas = []
    original = patch.image_attention

    def recording(q, k, v, extra_options):
        assert guider_sides.MODEL_CALL_OPTION in extra_options, "the layer must use the step's decision, not read the sigma"
        attention_sigmas.append(extra_options[guider_sides.MODEL_CALL_OPTION].sigma)
        return original(q, k, v, extra_options)

    plain = predictions_at_every_step(sd15, scheduler=scheduler, steps=steps)
    monkeypatch.setattr(patch, "image_attention", recording)
    patched = apply(sd15, linear_adapter(sd15, seed=1), image_embeds(1), start_at=start_at, end_at=end_at)
    ours = predictions_at_every_step(patched, scheduler=scheduler, steps=steps)
    acting = [index for index, (mine, theirs) in enumerate(zip(ours, plain)) if not mine.equal(theirs)]
    assert acting == expected
    assert all((ours[index] - plain[index]).abs().max() > 1e-4 for index in expected)
    assert sorted(set(attention_sigmas), reverse=True) == [sigmas[index] for index in expected]
    assert len(attention_sigmas) == 16 * len(expected), "16 layers, one image attention each, in the steps that act"


def test_cfg_one_and_batches_use_the_right_tokens(sd15):
    """cfg = 1 runs the positive pass alone, with the image prompt; in a batch every row gets its own chunk's
    tokens, so each row equals the same picture made alone."""
    managed = linear_adapter(sd15, seed=1)
    embeds = image_embeds(1)
    patched = apply(sd15, managed, embeds)
    single = helpers.sample(patched, cfg=1.0, batch=1)
    with_unconditional_tokens = helpers.sample(apply(sd15, managed, unconditional_only(embeds)), cfg=1.0)
    assert not close(single, with_unconditional_tokens, relative=1e-3), "the cfg 1 pass must get the image prompt"
    batch = helpers.sample(patched, cfg=1.0, batch=2)
    assert close(batch[0], single[0]) and close(batch[1], single[0])
    guided = helpers.sample(patched, cfg=3.0, batch=1)
    guided_batch = helpers.sample(patched, cfg=3.0, batch=3)
    assert all(close(row, guided[0]) for row in guided_batch)


def test_stacked_adapters_sum_their_terms(sd15):
    """Two Apply nodes = the sum of the two image terms, each with its own softmax (checked at the layer call)."""
    first, second = linear_adapter(sd15, seed=1), linear_adapter(sd15, seed=2)
    one = apply(sd15, first, image_embeds(1), weight=0.6)
    both = apply(one, second, image_embeds(2), weight=0.3)
    only_second = apply(sd15, second, image_embeds(2), weight=0.3)
    key = ("input", 1, 0)
    q, k, v, options = helpers.layer_inputs(sd15, key)
    assert helpers.replace_patch(sd15, key) is None
    plain = helpers.call_patch(None, q, k, v, options)
    term_one = helpers.call_patch(helpers.replace_patch(one, key), q, k, v, options) - plain
    term_two = helpers.call_patch(helpers.replace_patch(only_second, key), q, k, v, options) - plain
    stacked = helpers.call_patch(helpers.replace_patch(both, key), q, k, v, options)
    assert close(stacked, plain + term_one + term_two)
    assert len(helpers.replace_patch(both, key).terms) == 2
    assert helpers.replace_patch(one, key).terms == helpers.replace_patch(both, key).terms[:1], "the first model is unchanged"


def test_another_packs_patch_is_called_through(sd15):
    calls = []

    def foreign_patch(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return 2.0 * helpers.call_patch(None, q, k, v, extra_options)

    other = sd15.clone()
    other.set_model_attn2_replace(foreign_patch, "input", 1)  # a 2-tuple key, as many packs register
    managed = linear_adapter(sd15, seed=1)
    patched = apply(other, managed, image_embeds(1))
    key = ("input", 1, 0)
    q, k, v, options = helpers.layer_inputs(sd15, key)
    ours_alone = helpers.call_patch(helpers.replace_patch(apply(sd15, managed, image_embeds(1)), key), q, k, v, options)
    plain = helpers.call_patch(None, q, k, v, options)
    combined = helpers.call_patch(helpers.replace_patch(patched, key), q, k, v, options)
    assert calls, "the other pack's patch was dropped"
    assert close(combined, 2.0 * plain + (ours_alone - plain))
    helpers.sample(patched, cfg=2.0)  # and it runs inside a sampler


def test_image_keys_and_values_are_computed_once_not_per_step(sd15, monkeypatch):
    managed = linear_adapter(sd15, seed=1)
    calls = []
    original = DecoupledKeyValue.forward

    def counting(self, tokens):
        calls.append(1)
        return original(self, tokens)

    monkeypatch.setattr(DecoupledKeyValue, "forward", counting)
    patched = apply(sd15, managed, image_embeds(1))
    helpers.sample(patched, cfg=3.0, steps=3)
    assert len(calls) == 16, f"K'/V' computed {len(calls)} times for 16 layers over 3 steps × 2 passes"
    helpers.sample(patched, cfg=3.0, steps=3)
    assert len(calls) == 16, "a second run on the same device and dtype reuses them"


def test_the_image_projection_runs_once_per_term(sd15, monkeypatch):
    """Four stacked Apply nodes: four projections per run (one per term), not one per term and layer."""
    managed = linear_adapter(sd15, seed=1)
    projection = type(managed.adapter.model.image_proj)
    calls = []
    original = projection.forward

    def counting(self, embeds):
        calls.append(embeds.shape)
        return original(self, embeds)

    monkeypatch.setattr(projection, "forward", counting)
    stacked = sd15
    for seed in range(4):
        stacked = apply(stacked, managed, image_embeds(seed))
    helpers.sample(stacked, cfg=3.0, steps=3)
    assert len(calls) == 4, f"the image projection ran {len(calls)} times for 4 terms"


def test_clones_share_the_adapter_weights(sd15):
    """A clone holds its own patch objects (another pack's add() on it stays on it), sharing the terms and weights."""
    managed = linear_adapter(sd15, seed=1)
    weight = managed.adapter.model.layer(1).to_k_ip.weight
    stacked = sd15
    for _ in range(4):
        stacked = apply(stacked, managed, image_embeds(1))
    clone = stacked.clone()
    patch = helpers.replace_patch(clone, ("input", 1, 0))
    original = helpers.replace_patch(stacked, ("input", 1, 0))
    assert patch is not original and patch.terms is original.terms
    assert helpers.replace_patch(clone, ("input", 1)) is patch, "the (block, id) key holds the same patch"
    assert all(term.adapter.model.layer(1).to_k_ip.weight.data_ptr() == weight.data_ptr() for term in patch.terms)
    patchers = {id(model) for model in clone.model_patches_models()}
    assert patchers == {id(managed.weights_patcher)}, "four Apply nodes on one file hold one copy of its weights"
    assert copy.deepcopy(patch) is patch
