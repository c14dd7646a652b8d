"""Other packs' attn2 patches on the same layers, with the protocol cubiq's IPAdapter, InstantID and PuLID packs use:
a replace patch object holding callbacks, set under `(block, id)` keys on SD1.5 and `(block, id, index)` keys on
SDXL, and `add(callback, **kwargs)` called on whatever patch object such a pack finds under its key.

`ForeignPack` below follows that protocol as those packs implement it (their `set_model_patch_replace`: copy the
transformer_options dicts, set a new patch object or call `.add` on the one found; their patch object: ComfyUI's
optimized_attention for the text, then each callback in its sigma range adds its term). Its callback adds a second,
independent image prompt: λ·Attn(Q, K'', V'') with its own random tokens. In both orders, on both layouts, both
image prompts must act: at a layer the output is text + ours + theirs, and through the sampler each pack's prompt
changes the picture exactly as it does alone.
"""

import comfy_sampling_helpers as helpers
import pytest
import torch
from comfy_sampling_helpers import apply, close, image_embeds, linear_adapter
from tiny_models import tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.unet.layer_map import cross_attention_layers


class AttentionCallbacks:
    """The patch object of those packs: text attention, then every callback whose sigma range holds the step."""

    def __init__(self, callback, **kwargs):
        self.callbacks = [callback]
        self.kwargs = [kwargs]

    def add(self, callback, **kwargs):
        self.callbacks.append(callback)
        self.kwargs.append(kwargs)

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        out = optimized_attention(q, k, v, extra_options["n_heads"])
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else 999999999.9
        for callback, kwargs in zip(self.callbacks, self.kwargs):
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out


def foreign_image_prompt(out, q, k, v, extra_options, *, tokens, weight, sigma_start, sigma_end):
    """A callback of that protocol: λ·Attn(Q, K'', V'') with random image tokens of the layer's width."""
    from comfy.ldm.modules.attention import optimized_attention

    keys, values = tokens[q.shape[-1]]  # [1, T, H·D] each
    rows = q.shape[0]
    return weight * optimized_attention(q, keys.expand(rows, -1, -1), values.expand(rows, -1, -1), extra_options["n_heads"])


def set_patch_like_those_packs(model, key, **patch_kwargs):
    """Their set_model_patch_replace: new dicts for the levels, a new patch object, or `.add` on the one found."""
    options = model.model_options["transformer_options"].copy()
    options["patches_replace"] = options.get("patches_replace", {}).copy()
    options["patches_replace"]["attn2"] = options["patches_replace"].get("attn2", {}).copy()
    attn2 = options["patches_replace"]["attn2"]
    if key not in attn2:
        attn2[key] = AttentionCallbacks(foreign_image_prompt, **patch_kwargs)
        model.model_options["transformer_options"] = options
    else:
        attn2[key].add(foreign_image_prompt, **patch_kwargs)


def foreign_apply(model, *, seed: int, weight: float = 1.0):
    """What such a pack's apply node does: clone, then patch every cross-attention layer under the key it uses."""
    generator = torch.Generator().manual_seed(seed)
    layers = cross_attention_layers(model.model.diffusion_model)
    widths = sorted({layer.hidden_size for layer in layers})
    tokens = {width: (torch.randn(1, 4, width, generator=generator), torch.randn(1, 4, width, generator=generator)) for width in widths}
    patched = model.clone()
    patched.model_options.setdefault("transformer_options", {})
    one_per_block = len({layer.key[:2] for layer in layers}) == len(layers)  # SD1.5: they use (block, id)
    for layer in layers:
        key = layer.key[:2] if one_per_block else layer.key
        set_patch_like_those_packs(patched, key, tokens=tokens, weight=weight, sigma_start=999999999.9, sigma_end=0.0)
    return patched


LAYOUTS = {"SD1.5": ("input", 1, 0), "SDXL": ("input", 4, 1)}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request, comfy_host):
    model = tiny_comfy_model(request.param, seed=6)
    return request.param, model, linear_adapter(model, seed=3)


def layer_output(model, key, inputs):
    q, k, v, options = inputs
    attn2 = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    patch = attn2.get(key, attn2.get(key[:2]))  # the key ComfyUI looks up first, then the (block, id) key
    return helpers.call_patch(patch, q, k, v, options)


@pytest.mark.parametrize("order", ["ours first", "theirs first"])
def test_both_image_prompts_act_at_every_layer_in_both_orders(layout, order):
    name, model, managed = layout
    ours_alone = apply(model, managed, image_embeds(1), weight=0.8)
    theirs_alone = foreign_apply(model, seed=2)
    if order == "ours first":
        both = foreign_apply(ours_alone, seed=2)
    else:
        both = apply(theirs_alone, managed, image_embeds(1), weight=0.8)
    for layer in cross_attention_layers(model.model.diffusion_model):
        inputs = helpers.layer_inputs(model, layer.key)
        plain = helpers.call_patch(None, *inputs)
        ours = layer_output(ours_alone, layer.key, inputs) - plain
        theirs = layer_output(theirs_alone, layer.key, inputs) - plain
        assert ours.abs().max() > 1e-3 and theirs.abs().max() > 1e-3
        assert close(layer_output(both, layer.key, inputs), plain + ours + theirs, relative=1e-5), (name, order, layer.key)


@pytest.mark.parametrize("order", ["ours first", "theirs first"])
def test_through_the_sampler_each_pack_acts_as_it_does_alone(layout, order):
    """With our λ = 0 the picture is theirs alone, with their λ = 0 it is ours alone: to the bit. Before, with ours
    first on SD1.5, our (block, id, index) keys shadowed their (block, id) patch and theirs never ran."""
    name, model, managed = layout
    embeds = image_embeds(1)

    def combined(*, our_weight, their_weight):
        if order == "ours first":
            return foreign_apply(apply(model, managed, embeds, weight=our_weight), seed=2, weight=their_weight)
        return apply(foreign_apply(model, seed=2, weight=their_weight), managed, embeds, weight=our_weight)

    cfg = 3.0
    theirs_alone = helpers.sample(foreign_apply(model, seed=2), cfg=cfg)
    ours_alone = helpers.sample(apply(model, managed, embeds, weight=0.8), cfg=cfg)
    assert helpers.sample(combined(our_weight=0.0, their_weight=1.0), cfg=cfg).equal(theirs_alone), "their prompt is lost"
    assert helpers.sample(combined(our_weight=0.8, their_weight=0.0), cfg=cfg).equal(ours_alone), "our prompt is lost"
    both = helpers.sample(combined(our_weight=0.8, their_weight=1.0), cfg=cfg)
    assert (both - theirs_alone).abs().max() > 1e-3 and (both - ours_alone).abs().max() > 1e-3


def test_their_add_on_a_clone_leaves_the_model_before_it_unchanged(layout):
    """`.add` mutates the object found on the clone; every clone holds its own LayerPatch objects (on 0.3.75 and
    on hosts whose clone() shares patch objects), so the model the pack started from is not changed."""
    name, model, managed = layout
    ours = apply(model, managed, image_embeds(1), weight=0.8)
    key = LAYOUTS[name]
    inputs = helpers.layer_inputs(model, key)
    before = layer_output(ours, key, inputs)
    foreign_apply(ours, seed=2)
    foreign_apply(ours, seed=3)
    assert layer_output(ours, key, inputs).equal(before)
    assert not ours.model_options["transformer_options"]["patches_replace"]["attn2"][key].added


def test_a_second_pack_after_ours_adds_to_the_same_patch(layout):
    """ours → theirs → theirs again: both of their callbacks land in our patch and act, with ours."""
    name, model, managed = layout
    key = LAYOUTS[name]
    inputs = helpers.layer_inputs(model, key)
    plain = helpers.call_patch(None, *inputs)
    ours = layer_output(apply(model, managed, image_embeds(1), weight=0.8), key, inputs) - plain
    first = layer_output(foreign_apply(model, seed=2), key, inputs) - plain
    second = layer_output(foreign_apply(model, seed=3), key, inputs) - plain
    stacked = foreign_apply(foreign_apply(apply(model, managed, image_embeds(1), weight=0.8), seed=2), seed=3)
    assert close(layer_output(stacked, key, inputs), plain + ours + first + second, relative=1e-5)


class EmptyLookingPatch:
    """Another pack's replace patch that is falsy (a container with no entries yet): still a patch to call."""

    def __len__(self):
        return 0

    def __call__(self, q, k, v, extra_options):
        return torch.full_like(q, 7.0)


def test_a_falsy_patch_of_another_pack_is_kept_not_replaced_by_comfyuis_attention(comfy_host):
    from decoupled_ipadapter.ipadapter_core.unet.patch import LayerPatch

    layer = cross_attention_layers(tiny_comfy_model("SD1.5", seed=0).model.diffusion_model)[0]
    patch = LayerPatch(layer=layer, terms=(), base=EmptyLookingPatch())
    q = torch.randn(2, 16, layer.hidden_size)
    out = patch(q, q, q, {"n_heads": 1, "cond_or_uncond": [0, 1]})
    assert torch.equal(out, torch.full_like(q, 7.0))
