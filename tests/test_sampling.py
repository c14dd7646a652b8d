"""The patch inside ComfyUI's real samplers: λ = 0 and out-of-range steps are exact no-ops, cfg = 1 and batches
work, stacking sums each adapter's own softmax, another pack's patch is called through, K'/V' are computed once
per run, and clones share the adapter weights."""

import copy

import comfy_sampling_helpers as helpers
import pytest
import torch
from tiny_models import SD15_TEXT_WIDTH, adapter_state_dict, layer_hidden_sizes, nested, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.adapter import LoadedAdapter, build_adapter_model
from decoupled_ipadapter.ipadapter_core.unet.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.detection import detect_spec
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.memory import manage
from decoupled_ipadapter.models.adapter import DecoupledKeyValue


@pytest.fixture(scope="module")
def sd15(comfy_host):
    return tiny_comfy_model("SD1.5", seed=3)


def linear_adapter(model, *, seed: int):
    flat = adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(model), text_width=SD15_TEXT_WIDTH, seed=seed)
    parts = nested(flat)
    spec = detect_spec(parts, f"ip-adapter_sd15-{seed}.safetensors")
    adapter = LoadedAdapter(spec=spec, model=build_adapter_model(spec, parts, "test"), source=f"ip-adapter_sd15-{seed}.safetensors")
    return manage(adapter)


def image_embeds(seed: int, images: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return make_embeds(torch.randn(images, 1024, generator=generator), torch.zeros(1, 1024), clip_output="image_embeds")


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()


def apply(model, managed, embeds, *, weight=1.0, start_at=0.0, end_at=1.0):
    return apply_image_prompt(
        model, managed.adapter, managed.weights_patcher, embeds, weight=weight, start_at=start_at, end_at=end_at
    )


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
    full = helpers.sample(apply(sd15, managed, image_embeds(1)), cfg=3.0, steps=4)
    late = helpers.sample(apply(sd15, managed, image_embeds(1), start_at=0.5), cfg=3.0, steps=4)
    assert (late - plain).abs().max() > 1e-4 and (late - full).abs().max() > 1e-4


def test_cfg_one_and_batches_use_the_right_tokens(sd15):
    """cfg = 1 has no unconditional pass; in a batch every row gets its own chunk's tokens."""
    managed = linear_adapter(sd15, seed=1)
    patched = apply(sd15, managed, image_embeds(1))
    single = helpers.sample(patched, cfg=1.0, batch=1)
    batch = helpers.sample(patched, cfg=1.0, batch=2)
    assert close(batch[0], single[0]) and close(batch[1], single[0])
    guided = helpers.sample(patched, cfg=3.0, batch=2)
    assert close(guided[0], guided[1])
    assert not close(guided[0], single[0])


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


def test_image_keys_and_values_are_computed_once_per_run(sd15, monkeypatch):
    managed = linear_adapter(sd15, seed=1)
    calls = []
    original = DecoupledKeyValue.forward

    def counting(self, tokens):
        calls.append(1)
        return original(self, tokens)

    monkeypatch.setattr(DecoupledKeyValue, "forward", counting)
    helpers.sample(apply(sd15, managed, image_embeds(1)), cfg=3.0, steps=3)
    assert len(calls) == 16, f"K'/V' computed {len(calls)} times for 16 layers over 3 steps × 2 passes"


def test_clones_share_the_adapter_weights(sd15):
    managed = linear_adapter(sd15, seed=1)
    weight = managed.adapter.model.layer(1).to_k_ip.weight
    stacked = sd15
    for _ in range(4):
        stacked = apply(stacked, managed, image_embeds(1))
    clone = stacked.clone()
    patch = helpers.replace_patch(clone, ("input", 1, 0))
    assert all(term.adapter.model.layer(1).to_k_ip.weight.data_ptr() == weight.data_ptr() for term in patch.terms)
    assert patch is helpers.replace_patch(stacked, ("input", 1, 0)), "clone() must not deep-copy the patch"
    patchers = {id(model) for model in clone.model_patches_models()}
    assert patchers == {id(managed.weights_patcher)}, "four Apply nodes on one file hold one copy of its weights"
    assert copy.deepcopy(patch) is patch
