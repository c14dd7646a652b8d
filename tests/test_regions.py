"""IPAdapter Regional Conditioning, Combine Params and Apply IPAdapter from Params on a tiny SD1.5: the regions give the
UNet output of Encode + Apply IPAdapter (advanced) chained per region; the text prompts carry ComfyUI's conditioning
mask; bundles join in order; bad masks, empty bundles and weight types the family refuses name the node and region."""

import comfy_sampling_helpers as helpers
import pytest
import torch
from comfy_sampling_helpers import linear_adapter
from tiny_clip_vision import tiny_clip_vision
from tiny_models import tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError


def run(node, **inputs):
    """A V3 node executed as ComfyUI executes it (inference mode): its result tuple."""
    with torch.inference_mode():
        return node.execute(**inputs).result


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from decoupled_ipadapter.nodes import apply, combine, encode, regions

    return {
        "regional": regions.RegionalConditioning,
        "combine_params": regions.CombineParams,
        "from_params": regions.ApplyFromParams,
        "encode": encode.EncodeImage,
        "advanced": apply.ApplyIPAdapterAdvanced,
        "combine_embeds": combine.CombineEmbeds,
    }


@pytest.fixture(scope="module")
def sd15(comfy_host, tmp_path_factory):
    model = tiny_comfy_model("SD1.5", seed=61)
    clip_vision = tiny_clip_vision("ViT-H", tmp_path_factory.mktemp("regions_clip"), seed=62)
    return model, linear_adapter(model, seed=63), clip_vision


def pictures(seed: int, count: int = 1) -> torch.Tensor:
    return torch.rand(count, 40, 48, 3, generator=torch.Generator().manual_seed(seed))  # [N, H, W, 3]


def half_masks(*sides: str) -> torch.Tensor:
    """[len(sides), 64, 64]: each mask the left or the right half of the picture."""
    masks = torch.zeros(len(sides), 64, 64)
    for index, side in enumerate(sides):
        masks[index, :, slice(0, 32) if side == "left" else slice(32, 64)] = 1.0
    return masks


def region(nodes, images, *, mask=None, weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0, prompt_weight=1.0, **text):
    return run(
        nodes["regional"], image=images, image_weight=weight, prompt_weight=prompt_weight, weight_type=weight_type,
        start_at=start_at, end_at=end_at, mask=mask, **text,
    )  # fmt: skip


def from_params(nodes, model, managed, clip_vision, params, **options):
    options = {"combine_embeds": "concat", "embeds_scaling": "V only", **options}
    return run(nodes["from_params"], model=model, ipadapter=managed, clip_vision=clip_vision, ipadapter_params=params, **options)[0]


def chained_apply(nodes, model, managed, clip_vision, regions, *, negative=None, embeds_scaling="V only"):
    """What the regions mean: per region, IPAdapter Encode Image and Apply IPAdapter (advanced), in a chain."""
    for images, options in regions:
        (embeds,) = run(nodes["encode"], ipadapter=managed, clip_vision=clip_vision, image=images, negative_image=negative)
        options = {"weight": 1.0, "start_at": 0.0, "end_at": 1.0, "weight_type": "linear", "attn_mask": None, **options}
        (model,) = run(
            nodes["advanced"], model=model, ipadapter=managed, embeds=embeds, embeds_scaling=embeds_scaling, block_weights="", **options
        )
    return model


def test_two_regions_give_the_unet_output_of_two_chained_advanced_applies(nodes, sd15):
    model, managed, clip_vision = sd15
    first = (pictures(1), dict(weight=0.7, weight_type="ease in", start_at=0.0, end_at=0.6, attn_mask=half_masks("left")))
    second = (pictures(2, 2), dict(weight=0.5, weight_type="linear", start_at=0.3, end_at=1.0, attn_mask=half_masks("left", "right")))
    negative = pictures(3)
    bundles = [
        region(nodes, images, mask=options["attn_mask"], weight=options["weight"], weight_type=options["weight_type"],
               start_at=options["start_at"], end_at=options["end_at"])[0]
        for images, options in (first, second)
    ]  # fmt: skip
    (params,) = run(nodes["combine_params"], params_1=bundles[0], params_2=bundles[1])
    ours = from_params(nodes, model, managed, clip_vision, params, embeds_scaling="K+V", image_negative=negative)
    chained = chained_apply(nodes, model, managed, clip_vision, [first, second], negative=negative, embeds_scaling="K+V")
    by_regions = helpers.sample(ours, cfg=3.0, steps=3)
    assert torch.equal(by_regions, helpers.sample(chained, cfg=3.0, steps=3))
    first_alone = chained_apply(nodes, model, managed, clip_vision, [first], negative=negative, embeds_scaling="K+V")
    first_only = helpers.sample(first_alone, cfg=3.0, steps=3)
    assert (by_regions - first_only).abs().max() > 1e-4  # the second region acts
    assert (first_only - helpers.sample(model, cfg=3.0, steps=3)).abs().max() > 1e-4  # so does the first


def test_a_region_mixes_its_pictures_as_combine_embeds_does(nodes, sd15):
    model, managed, clip_vision = sd15
    images = pictures(4, 2)
    params = region(nodes, images, weight=0.8)[0]
    ours = helpers.sample(from_params(nodes, model, managed, clip_vision, params, combine_embeds="norm average"), cfg=3.0)
    singles = [run(nodes["encode"], ipadapter=managed, clip_vision=clip_vision, image=images[index : index + 1])[0] for index in (0, 1)]
    (mixed,) = run(nodes["combine_embeds"], embeds_1=singles[0], embeds_2=singles[1], method="norm average")
    (expected,) = run(
        nodes["advanced"], model=model, ipadapter=managed, embeds=mixed, weight=0.8, start_at=0.0, end_at=1.0,
        weight_type="linear", embeds_scaling="V only", block_weights="",
    )  # fmt: skip
    torch.testing.assert_close(ours, helpers.sample(expected, cfg=3.0), rtol=1e-5, atol=1e-5)
    concatenated = helpers.sample(from_params(nodes, model, managed, clip_vision, params), cfg=3.0)
    assert (concatenated - ours).abs().max() > 1e-4


def test_the_text_prompts_carry_the_region_mask_and_unconnected_ones_stay_none(nodes):
    positive = helpers.text_conditioning(7, 768)
    negative = helpers.text_conditioning(8, 768)
    mask = torch.rand(64, 64)
    params, masked_positive, masked_negative = region(nodes, pictures(5), mask=mask, prompt_weight=2.5, positive=positive, negative=negative)
    for masked, original in ((masked_positive, positive), (masked_negative, negative)):
        assert masked[0][0] is original[0][0]
        assert torch.equal(masked[0][1]["mask"], mask.unsqueeze(0)) and masked[0][1]["mask"].shape == (1, 64, 64)
        assert masked[0][1]["mask_strength"] == 2.5 and masked[0][1]["set_area_to_bounds"] is False
        assert "mask" not in original[0][1]  # the input is not changed
    assert torch.equal(params[0].mask, mask.unsqueeze(0))
    _, none_positive, none_negative = region(nodes, pictures(5), mask=mask)
    assert none_positive is None and none_negative is None
    _, unmasked, _ = region(nodes, pictures(5), positive=positive)
    assert unmasked is positive  # no mask: the prompt acts everywhere, as before


def test_combine_params_joins_the_regions_in_input_order(nodes):
    bundles = [region(nodes, pictures(10 + index), weight=0.1 * (index + 1))[0] for index in range(4)]
    (two,) = run(nodes["combine_params"], params_1=bundles[0], params_2=bundles[1])
    (four,) = run(nodes["combine_params"], params_1=bundles[2], params_2=two, params_4=bundles[3])
    assert [round(item.weight, 2) for item in four] == [0.3, 0.1, 0.2, 0.4]
    assert all(isinstance(item, type(bundles[0][0])) for item in four) and isinstance(four, tuple)
    (five,) = run(
        nodes["combine_params"], params_1=bundles[0], params_2=bundles[1], params_3=bundles[2], params_4=bundles[3], params_5=two
    )
    assert len(five) == 6


def test_a_mask_batch_that_fits_neither_one_nor_the_pictures_is_refused(nodes):
    with pytest.raises(IPAdapterError, match=r"^IPAdapter Regional Conditioning: mask holds 3 masks but image holds 2 pictures"):
        region(nodes, pictures(20, 2), mask=torch.ones(3, 64, 64))


def test_a_range_that_ends_before_it_starts_is_refused_by_the_region(nodes):
    with pytest.raises(IPAdapterError, match=r"^IPAdapter Regional Conditioning: start_at \(0.8\) and end_at \(0.2\) must satisfy"):
        region(nodes, pictures(25), start_at=0.8, end_at=0.2)


def test_per_picture_masks_with_mixed_pictures_are_refused_naming_the_region(nodes, sd15):
    model, managed, clip_vision = sd15
    plain = region(nodes, pictures(21))[0]
    per_picture = region(nodes, pictures(22, 2), mask=half_masks("left", "right"))[0]
    refusal = r"^Apply IPAdapter from Params: region 2 of 2: its mask holds one mask per picture \(2\), but combine_embeds mixed"
    with pytest.raises(IPAdapterError, match=refusal):
        from_params(nodes, model, managed, clip_vision, plain + per_picture, combine_embeds="average")


def test_empty_params_are_refused(nodes, sd15):
    model, managed, clip_vision = sd15
    with pytest.raises(IPAdapterError, match=r"^Apply IPAdapter from Params: ipadapter_params holds no region"):
        from_params(nodes, model, managed, clip_vision, ())


def test_a_weight_type_the_family_refuses_names_the_region(nodes, tmp_path):
    from safetensors.torch import save_file
    from tiny_flux import tiny_flux_config, tiny_flux_model, xlabs_adapter_state_dict

    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.memory import manage

    config = tiny_flux_config(double_blocks=1, single_blocks=1)
    weights = xlabs_adapter_state_dict(hidden_size=config["hidden_size"], double_blocks=config["depth"], seed=3)
    save_file(weights, str(tmp_path / "flux-ip-adapter.safetensors"))
    flux_adapter = manage(load_adapter(str(tmp_path / "flux-ip-adapter.safetensors")))
    plain, styled = region(nodes, pictures(23))[0], region(nodes, pictures(24), weight_type="style transfer")[0]
    (params,) = run(nodes["combine_params"], params_1=plain, params_2=styled)
    refusal = r"^Apply IPAdapter from Params: region 2 of 2: The Flux IP-Adapter does not take weight_type 'style transfer'"
    with pytest.raises(IPAdapterError, match=refusal):
        from_params(nodes, tiny_flux_model(config, seed=1), flux_adapter, tiny_clip_vision("ViT-L", tmp_path), params)


@pytest.mark.parametrize(
    ("node", "inputs", "message"),
    [
        ("regional", {"weight_type": "style"}, "'style' is not an option of weight_type"),
        ("from_params", {"combine_embeds": "median"}, "'median' is not an option of combine_embeds"),
        ("from_params", {"embeds_scaling": "K"}, "'K' is not an option of embeds_scaling"),
        ("from_params", {"crop": "top"}, "'top' is not an option of crop"),
    ],
)
def test_unknown_options_are_refused_at_queue_time(nodes, node, inputs, message):
    result = nodes[node].validate_inputs(**inputs)
    assert isinstance(result, str) and message in result


def test_known_options_pass_queue_time_validation(nodes):
    assert nodes["regional"].validate_inputs(weight_type="style transfer precise") is True
    assert nodes["from_params"].validate_inputs(combine_embeds="norm average", embeds_scaling="K+V", crop="pad") is True
