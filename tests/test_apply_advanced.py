"""Apply IPAdapter (advanced), the node: with its defaults it is Apply IPAdapter, bit for bit, under every guider,
start/end and stacking; the composition image reaches exactly the composition layers; bad options are refused at
queue time where the text alone shows it, and with a message naming the node and an example when the model does."""

import comfy_sampling_helpers as helpers
import pytest
import torch
from comfy_sampling_helpers import call_patch, image_embeds, layer_inputs, linear_adapter
from tiny_models import tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.unet.blocks import unet_transformer_modules


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from decoupled_ipadapter.nodes.apply import ApplyIPAdapter, ApplyIPAdapterAdvanced

    return ApplyIPAdapter, ApplyIPAdapterAdvanced


@pytest.fixture(scope="module", params=["SD1.5", "SDXL"])
def tiny(request, comfy_host):
    model = tiny_comfy_model(request.param, seed=21)
    return request.param, model, linear_adapter(model, seed=22)


def plain_apply(nodes, model, managed, embeds, **options):
    options = {"weight": 0.8, "start_at": 0.0, "end_at": 1.0, **options}
    return nodes[0].execute(model=model, ipadapter=managed, embeds=embeds, **options).result[0]


def advanced_apply(nodes, model, managed, embeds, **options):
    options = {
        "weight": 0.8, "start_at": 0.0, "end_at": 1.0, "weight_type": "linear", "embeds_scaling": "V only",
        "block_weights": "", **options,
    }  # fmt: skip
    return nodes[1].execute(model=model, ipadapter=managed, embeds=embeds, **options).result[0]


def guided(model, kind: str):
    from comfy_extras.nodes_custom_sampler import CFGGuider, DualCFGGuider
    from comfy_extras.nodes_perpneg import PerpNegGuider

    width = helpers.text_width(model)
    positive, negative, middle = (helpers.text_conditioning(seed, width) for seed in (31, 32, 33))
    if kind == "CFGGuider":
        return CFGGuider.execute(model=model, positive=positive, negative=negative, cfg=4.0).result[0]
    if kind == "DualCFGGuider":
        return DualCFGGuider.execute(
            model=model, cond1=positive, cond2=middle, negative=negative, cfg_conds=3.0, cfg_cond2_negative=2.0, style="regular"
        ).result[0]
    return PerpNegGuider.execute(
        model=model, positive=positive, negative=negative, empty_conditioning=middle, cfg=4.0, neg_scale=1.0
    ).result[0]


@pytest.mark.parametrize("guider", ["CFGGuider", "DualCFGGuider", "PerpNegGuider"])
def test_defaults_are_apply_ipadapter_bit_for_bit_with_guiders_ranges_and_stacking(nodes, tiny, guider):
    _, model, managed = tiny
    first, second = image_embeds(41), image_embeds(42)
    by_plain = plain_apply(nodes, plain_apply(nodes, model, managed, first, start_at=0.2, end_at=0.8), managed, second, weight=0.5)
    by_advanced = advanced_apply(nodes, advanced_apply(nodes, model, managed, first, start_at=0.2, end_at=0.8), managed, second, weight=0.5)
    ours = helpers.custom_sample(guided(by_advanced, guider), steps=3)
    assert torch.equal(ours, helpers.custom_sample(guided(by_plain, guider), steps=3))
    assert (ours - helpers.custom_sample(guided(model, guider), steps=3)).abs().max() > 1e-4


def module_layer(model, index: int):
    return unet_transformer_modules(model.model.diffusion_model)[index].layers[0]


def layer_output(patched, layer, inputs):
    q, k, v, options = inputs
    return call_patch(helpers.replace_patch(patched, layer.key), q, k, v, options)


COMPOSITION_MODULE = {"SD1.5": 5, "SDXL": 3}
STYLE_MODULE = {"SD1.5": 0, "SDXL": 6}


def test_a_style_type_stacks_on_a_plain_apply_and_both_act(nodes, tiny):
    """At the style layer the stack adds both image-prompt terms to the text attention; elsewhere only the plain one."""
    layout, model, managed = tiny
    style_only = advanced_apply(nodes, model, managed, image_embeds(43), weight_type="style transfer")
    plain_only = plain_apply(nodes, model, managed, image_embeds(44))
    both = advanced_apply(nodes, plain_only, managed, image_embeds(43), weight_type="style transfer")
    for index, terms in ((STYLE_MODULE[layout], (plain_only, style_only)), (COMPOSITION_MODULE[layout], (plain_only,))):
        layer = module_layer(model, index)
        inputs = layer_inputs(model, layer.key, seed=4)
        text_only = layer_output(model, layer, inputs)
        added = [layer_output(patched, layer, inputs) - text_only for patched in terms]
        assert all(term.abs().max() > 1e-3 for term in added), index
        torch.testing.assert_close(layer_output(both, layer, inputs) - text_only, sum(added), rtol=1e-5, atol=1e-6)


def test_composition_embeds_reach_exactly_the_composition_layers(nodes, tiny):
    layout, model, managed = tiny
    style, composition = image_embeds(45), image_embeds(46)
    both = advanced_apply(
        nodes, model, managed, style, weight_type="style and composition", composition_embeds=composition, composition_weight=0.6
    )
    as_composition = advanced_apply(nodes, model, managed, composition, weight=0.6, weight_type="composition")
    as_style = advanced_apply(nodes, model, managed, style, weight_type="style transfer")
    composition_layer = module_layer(model, COMPOSITION_MODULE[layout])
    style_layer = module_layer(model, STYLE_MODULE[layout])
    for layer, alone in ((composition_layer, as_composition), (style_layer, as_style)):
        inputs = layer_inputs(model, layer.key, seed=3)
        assert torch.equal(layer_output(both, layer, inputs), layer_output(alone, layer, inputs))
    without = advanced_apply(nodes, model, managed, style, weight_type="style and composition", composition_weight=0.6)
    inputs = layer_inputs(model, composition_layer.key, seed=3)
    main_there = advanced_apply(nodes, model, managed, style, weight=0.6, weight_type="composition")
    assert torch.equal(layer_output(without, composition_layer, inputs), layer_output(main_there, composition_layer, inputs))
    assert not torch.equal(layer_output(both, composition_layer, inputs), layer_output(without, composition_layer, inputs))


def test_a_mask_on_apply_ipadapter_confines_the_prompt(nodes, tiny):
    """At a layer with an 8x8 grid, the left half's queries get the image prompt, the right half's the text alone."""
    _, model, managed = tiny
    embeds = image_embeds(47)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0  # the left half of the picture
    masked = plain_apply(nodes, model, managed, embeds, attn_mask=mask)
    unmasked = plain_apply(nodes, model, managed, embeds)
    layer = module_layer(model, 0)
    q, k, v, options = layer_inputs(model, layer.key, seed=5)  # 64 queries: the 8x8 grid of a 64x64 latent's layer
    options = {**options, "original_shape": [2, 4, 8, 8], "activations_shape": [2, q.shape[-1], 8, 8]}
    columns = torch.arange(64) % 8
    left, right = columns < 4, columns >= 4
    out = layer_output(masked, layer, (q, k, v, options))
    with_prompt = layer_output(unmasked, layer, (q, k, v, options))
    text_only = layer_output(model, layer, (q, k, v, options))
    assert (with_prompt - text_only)[:, left].abs().max() > 1e-3
    torch.testing.assert_close(out[:, left], with_prompt[:, left], rtol=1e-5, atol=1e-6)
    assert torch.equal(out[:, right], text_only[:, right])
    nothing = helpers.sample(plain_apply(nodes, model, managed, embeds, attn_mask=torch.zeros(1, 64, 64)), cfg=3.0)
    assert torch.equal(nothing, helpers.sample(model, cfg=3.0))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weight_type": "style"}, "'style' is not an option of weight_type; use one of: linear, ease in"),
        ({"embeds_scaling": "K"}, "'K' is not an option of embeds_scaling; use one of: V only, K+V"),
        ({"block_weights": "{up: 1}"}, 'block_weights "{up: 1}": it is not valid JSON'),
        ({"block_weights": '{"upper": 1}'}, '"upper" is not a part of the UNet'),
        ({"block_weights": "3=1.0"}, '"3=1.0" is not "index:weight"'),
    ],
)
def test_options_the_text_alone_refutes_are_refused_at_queue_time(nodes, options, message):
    result = nodes[1].validate_inputs(**{"weight_type": "linear", "embeds_scaling": "V only", "block_weights": "", **options})
    assert isinstance(result, str) and message in result


def test_valid_options_pass_queue_time_validation(nodes):
    assert nodes[1].validate_inputs(weight_type="style transfer precise", embeds_scaling="K+mean(V) w/ C penalty", block_weights='{"mid": 1}') is True
    assert nodes[1].validate_inputs(weight_type="linear", embeds_scaling="V only", block_weights="3:1.0, 6:0.5") is True


@pytest.mark.parametrize(
    ("block_weights", "problem"),
    [
        ('{"down": {"block_7": 1.0}}', '"down" has no "block_7" with attentions in this model'),
        ('{"up": {"block_1": [1.0, 0.0]}}', "up.block_1 has 3 attentions, so its list needs 3 values"),
        ("40:1.0", "this model has no transformer index 40"),
    ],
)
def test_blocks_the_model_lacks_are_refused_with_the_node_name_and_an_example(nodes, tiny, block_weights, problem):
    _, model, managed = tiny
    with pytest.raises(IPAdapterError) as refused:
        advanced_apply(nodes, model, managed, image_embeds(48), block_weights=block_weights)
    message = str(refused.value)
    assert message.startswith(f'Apply IPAdapter (advanced): block_weights "{block_weights}"')
    assert problem in message and "Write a diffusers scale dict such as" in message


@pytest.mark.parametrize("node", [0, 1])
def test_a_range_that_ends_before_it_starts_is_refused(nodes, tiny, node):
    _, model, managed = tiny
    apply = plain_apply if node == 0 else advanced_apply
    with pytest.raises(IPAdapterError, match=r"start_at \(0.8\) and end_at \(0.2\) must satisfy 0 <= start_at <= end_at <= 1"):
        apply(nodes, model, managed, image_embeds(49), start_at=0.8, end_at=0.2)
