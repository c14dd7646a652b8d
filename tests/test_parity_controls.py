"""The controls of Apply IPAdapter (advanced) against diffusers and the note's formulas, through ComfyUI's sampler.

- Per-block weights: a diffusers scale dict in `block_weights` gives what diffusers gives after
  `set_ip_adapter_scale(dict)` (InstantStyle's style and style + layout dicts, dicts weighting the middle block),
  on the tiny SD1.5 and SDXL UNets; a weight type that equals a dict gives the same output as that dict.
- Masks: diffusers' `ip_adapter_masks` (hard, soft, one mask per image; a mask taller than the picture against
  diffusers given it stretched to the picture).
- The denoised prediction of one Euler step from σ = 2 to 0 with cfg 2 (ComfyUI's sample_custom: the cond and
  uncond batch calc_cond_batch builds) against diffusers' cond and uncond predictions combined the same way.
  Tolerance: fp32, |Δ| ≤ 2e-5 · max|IP term| (the change the adapter makes) + 1e-6 · max|output| (the rounding
  floor of fp32 outputs, which matters where a map patches only a few layers and the term is small).
- Embeds scaling and the precise swap, at one layer's patch, against a direct computation of the note's formulas.
- λ = 0 and an all-zero map give exactly the unpatched model and put no patch on any layer; a zero-weight layer
  gets no patch.
"""

import json
import types

import pytest
import torch
from comfy_sampling_helpers import call_patch, layer_inputs
from safetensors.torch import save_file
from tiny_models import (
    SD15_TEXT_WIDTH,
    SDXL_TEXT_WIDTH,
    adapter_state_dict,
    diffusers_twin,
    layer_hidden_sizes,
    nested,
    tiny_comfy_model,
)

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.memory import manage
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.unet.blocks import unet_transformer_modules
from decoupled_ipadapter.ipadapter_core.unet.layer_map import cross_attention_layers

RELATIVE_TOLERANCE = 2e-5
ROUNDING_FLOOR = 1e-6
SIGMA, CFG = 2.0, 2.0
LATENT = 16  # latent side; the picture is 8× that
TEXT_WIDTH = {"SD1.5": SD15_TEXT_WIDTH, "SDXL": SDXL_TEXT_WIDTH}
PARITY_ERRORS: list[tuple[str, float]] = []  # printed at the end of the run by conftest


@pytest.fixture(scope="module", params=["SD1.5", "SDXL"])
def tiny(request, comfy_host, tmp_path_factory):
    layout = request.param
    model = tiny_comfy_model(layout, seed=1)
    reference = diffusers_twin(model, layout)
    flat = adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(model), text_width=TEXT_WIDTH[layout], seed=2)
    path = tmp_path_factory.mktemp("controls") / "ip-adapter_controls.safetensors"
    save_file(flat, str(path))
    reference._load_ip_adapter_weights([nested(flat)], low_cpu_mem_usage=False)
    adapter = load_adapter(str(path))
    return types.SimpleNamespace(layout=layout, model=model, reference=reference, managed=manage(adapter))


def embeds_of(images: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return make_embeds(torch.randn(images, 1024, generator=generator), torch.zeros(1, 1024), clip_output="image_embeds")


def inputs(layout: str, seed: int):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 4, LATENT, LATENT, generator=generator)  # [1, 4, h, w]
    start = torch.randn(1, 4, LATENT, LATENT, generator=generator)  # a non-empty latent (an empty one is not shifted)
    texts = torch.randn(2, 77, TEXT_WIDTH[layout], generator=generator)  # [uncond, cond]
    return noise, start, texts


def apply(tiny, embeds, **options):
    options = {"weight": 1.0, "start_at": 0.0, "end_at": 1.0, **options}
    return apply_image_prompt(tiny.model, tiny.managed.adapter, tiny.managed.weights_patcher, embeds, **options)


def comfy_denoised(patcher, noise, start, texts):
    """ComfyUI's sampler: one Euler step from σ to 0 lands on the cfg-combined denoised prediction."""
    import comfy.sample
    import comfy.samplers

    out = comfy.sample.sample_custom(
        patcher, noise, CFG, comfy.samplers.ksampler("euler"), torch.tensor([SIGMA, 0.0]),
        [[texts[1:], {}]], [[texts[:1], {}]], start, disable_pbar=True, seed=0,
    )  # fmt: skip
    return patcher.model.latent_format.process_in(out)


def diffusers_denoised(tiny, noise, start, texts, embeds, *, scale, masks=None):
    """diffusers' UNet on the same noised input: eps for [uncond, cond], denoised = x − σ·eps, combined by cfg."""
    from diffusers.loaders.ip_adapter import IPAdapterMixin

    IPAdapterMixin.set_ip_adapter_scale(types.SimpleNamespace(unet=tiny.reference), scale)
    sampling = tiny.model.get_model_object("model_sampling")
    x = SIGMA * noise + tiny.model.model.latent_format.process_in(start)  # [1, 4, h, w]
    t = sampling.timestep(torch.tensor([SIGMA])).expand(2)
    rows = torch.stack([embeds.negative, embeds.positive])  # [2 (uncond, cond), n, E]
    extra = {} if masks is None else {"cross_attention_kwargs": {"ip_adapter_masks": [masks.unsqueeze(0)]}}  # [1, M, H, W]
    with torch.no_grad():
        eps = tiny.reference(
            x.expand(2, -1, -1, -1) / (SIGMA**2 + 1) ** 0.5, t, encoder_hidden_states=texts,
            added_cond_kwargs={"image_embeds": [rows]}, **extra,
        ).sample  # fmt: skip
    denoised = x - SIGMA * eps  # [2, 4, h, w]
    return denoised[:1] + CFG * (denoised[1:] - denoised[:1])


def check(case: str, ours, theirs, plain):
    term = (theirs - plain).abs().max().item()
    error = (ours - theirs).abs().max().item()
    PARITY_ERRORS.append((case, error / term))
    assert term > 1e-4, "the image prompt must change the prediction"
    assert error <= RELATIVE_TOLERANCE * term + ROUNDING_FLOOR * theirs.abs().max().item(), f"{case}: |Δ| = {error}, IP term {term}"


def scaled(scale, factor: float):
    """A diffusers scale dict with every number multiplied by `factor`."""
    if isinstance(scale, dict):
        return {key: scaled(value, factor) for key, value in scale.items()}
    if isinstance(scale, list):
        return [scaled(value, factor) for value in scale]
    return scale * factor


SCALE_DICTS = {
    "SDXL": {
        "style (InstantStyle)": {"up": {"block_0": [0.0, 1.0, 0.0]}},
        "style and layout (InstantStyle)": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},
        "middle and up": {"mid": 0.7, "up": {"block_1": 0.3}},
    },
    "SD1.5": {
        "style (InstantStyle)": {"up": {"block_1": 1.0}},
        "style and layout (InstantStyle)": {"down": {"block_2": 1.0}, "mid": 1.0, "up": {"block_1": 1.0}},
        "middle, down lists": {"down": {"block_0": [0.25, 0.5]}, "mid": -0.5, "up": {"block_3": [0.1, 0.2, 0.3]}},
    },
}


@pytest.mark.parametrize("name", range(3))
@pytest.mark.parametrize("weight", [1.0, 0.6])
def test_block_weight_dicts_match_set_ip_adapter_scale(tiny, name, weight):
    name, scale = list(SCALE_DICTS[tiny.layout].items())[name]
    noise, start, texts = inputs(tiny.layout, 3)
    embeds = embeds_of(1, 4)
    ours = comfy_denoised(apply(tiny, embeds, weight=weight, block_weights=json.dumps(scale)), noise, start, texts)
    theirs = diffusers_denoised(tiny, noise, start, texts, embeds, scale=scaled(scale, weight))
    check(f"{tiny.layout} block_weights {name} ×{weight}", ours, theirs, comfy_denoised(tiny.model, noise, start, texts))


WEIGHT_TYPE_DICTS = {  # weight types whose map is a diffusers dict (weight w = 1)
    "SDXL": {"style transfer": {"up": {"block_0": [0.0, 1.0, 0.0]}}, "composition": {"down": {"block_2": [0.0, 1.0]}}},
    "SD1.5": {
        "style transfer": {
            "down": {"block_0": 1.0, "block_1": 1.0},
            "up": {"block_1": [0.0, 0.0, 1.0], "block_2": 1.0, "block_3": 1.0},
        },  # indexes 0–3 and 9–15
        "composition": {"down": {"block_2": [0.25, 1.0]}},
    },
}


@pytest.mark.parametrize("weight_type", ["style transfer", "composition"])
def test_weight_types_give_the_output_of_their_diffusers_dict(tiny, weight_type):
    noise, start, texts = inputs(tiny.layout, 5)
    embeds = embeds_of(1, 6)
    scale = WEIGHT_TYPE_DICTS[tiny.layout][weight_type]
    by_type = comfy_denoised(apply(tiny, embeds, weight_type=weight_type), noise, start, texts)
    by_dict = comfy_denoised(apply(tiny, embeds, block_weights=json.dumps(scale)), noise, start, texts)
    assert torch.equal(by_type, by_dict)
    theirs = diffusers_denoised(tiny, noise, start, texts, embeds, scale=scale)
    check(f"{tiny.layout} weight_type {weight_type}", by_type, theirs, comfy_denoised(tiny.model, noise, start, texts))


def picture_mask(kind: str, height: int = 8 * LATENT, width: int = 8 * LATENT) -> torch.Tensor:
    """`[H, W]` masks at picture resolution."""
    if kind == "hard":
        mask = torch.zeros(height, width)
        mask[:, : width // 2] = 1.0  # the left half
        return mask
    if kind == "soft":
        return torch.linspace(0.0, 1.0, width).expand(height, width).clone()  # a horizontal ramp
    raise ValueError(kind)


MASK_CASES = {  # name: (reference images, masks [M, H, W], the masks diffusers gets: None for the same)
    "hard": (1, lambda: picture_mask("hard")[None], None),
    "soft": (1, lambda: picture_mask("soft")[None], None),
    # stretched to the square picture here; diffusers, which would shear it, gets it stretched already (the left
    # half stays the left half: the mask is constant along its height, so bicubic along that axis changes nothing)
    "taller than the picture": (1, lambda: picture_mask("hard", 96, 64)[None], lambda: picture_mask("hard")[None]),
    "one per image": (2, lambda: torch.stack([picture_mask("hard"), 1 - picture_mask("soft")]), None),
}


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_attention_masks_match_diffusers_ip_adapter_masks(tiny, name):
    images, make_masks, make_their_masks = MASK_CASES[name]
    masks = make_masks()
    noise, start, texts = inputs(tiny.layout, 7)
    embeds = embeds_of(images, 8)
    ours = comfy_denoised(apply(tiny, embeds, weight=0.8, attn_mask=masks), noise, start, texts)
    their_masks = masks if make_their_masks is None else make_their_masks()
    theirs = diffusers_denoised(tiny, noise, start, texts, embeds, scale=0.8, masks=their_masks)
    check(f"{tiny.layout} mask {name}", ours, theirs, comfy_denoised(tiny.model, noise, start, texts))
    unmasked = comfy_denoised(apply(tiny, embeds, weight=0.8), noise, start, texts)
    assert (unmasked - ours).abs().max() > 1e-4, "the mask must change what the prompt does"


def test_two_stacked_masked_references_match_diffusers_two_adapters(tiny, tmp_path):
    """The regional graph: two Apply nodes, each reference masked to one half = diffusers with two adapters and a
    mask each."""
    from diffusers.loaders.ip_adapter import IPAdapterMixin

    flat = adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(tiny.model), text_width=TEXT_WIDTH[tiny.layout], seed=9)
    save_file(flat, str(tmp_path / "second.safetensors"))
    second = manage(load_adapter(str(tmp_path / "second.safetensors")))
    reference = diffusers_twin(tiny.model, tiny.layout)
    first_flat = adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(tiny.model), text_width=TEXT_WIDTH[tiny.layout], seed=2)
    reference._load_ip_adapter_weights([nested(first_flat), nested(flat)], low_cpu_mem_usage=False)
    left, right = picture_mask("hard"), 1 - picture_mask("hard")
    first_embeds, second_embeds = embeds_of(1, 10), embeds_of(1, 11)
    patched = apply(tiny, first_embeds, weight=0.9, attn_mask=left)
    patched = apply_image_prompt(
        patched, second.adapter, second.weights_patcher, second_embeds, weight=0.7, start_at=0.0, end_at=1.0, attn_mask=right
    )
    noise, start, texts = inputs(tiny.layout, 12)
    ours = comfy_denoised(patched, noise, start, texts)
    IPAdapterMixin.set_ip_adapter_scale(types.SimpleNamespace(unet=reference), [0.9, 0.7])
    sampling = tiny.model.get_model_object("model_sampling")
    x = SIGMA * noise + tiny.model.model.latent_format.process_in(start)
    rows = [torch.stack([embeds.negative, embeds.positive]) for embeds in (first_embeds, second_embeds)]
    with torch.no_grad():
        eps = reference(
            x.expand(2, -1, -1, -1) / (SIGMA**2 + 1) ** 0.5, sampling.timestep(torch.tensor([SIGMA])).expand(2),
            encoder_hidden_states=texts, added_cond_kwargs={"image_embeds": rows},
            cross_attention_kwargs={"ip_adapter_masks": [left[None, None], right[None, None]]},
        ).sample  # fmt: skip
    denoised = x - SIGMA * eps
    theirs = denoised[:1] + CFG * (denoised[1:] - denoised[:1])
    check(f"{tiny.layout} two masked references", ours, theirs, comfy_denoised(tiny.model, noise, start, texts))


def test_mask_count_must_be_one_or_one_per_image(tiny):
    with pytest.raises(IPAdapterError, match="attn_mask holds 3 masks but the embeds hold 2 reference images"):
        apply(tiny, embeds_of(2, 1), attn_mask=torch.ones(3, 64, 64))


def by_hand_attention(q, keys, values, heads: int) -> torch.Tensor:
    """softmax(Q·Kᵀ/√d)·V per head, written out. q `[B, Nq, H·D]`, keys/values `[B, T, H·D]`."""
    batch, queries, width = q.shape
    d = width // heads
    q = q.view(batch, queries, heads, d).transpose(1, 2)  # [B, H, Nq, D]
    keys = keys.view(batch, -1, heads, d).transpose(1, 2)  # [B, H, T, D]
    values = values.view(batch, -1, heads, d).transpose(1, 2)  # [B, H, T, D]
    weights = torch.softmax(q @ keys.transpose(-1, -2) / d**0.5, dim=-1)  # [B, H, Nq, T]
    return (weights @ values).transpose(1, 2).reshape(batch, queries, width)  # [B, Nq, H·D]


def layer_of_module(tiny, index: int):
    module = unet_transformer_modules(tiny.model.model.diffusion_model)[index]
    return module.layers[0]


def image_kv(tiny, layer, embeds) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's K'/V' for the (cond, uncond) tokens: `[2, T, C]` each, from the adapter's own modules."""
    adapter_model = tiny.managed.adapter.model
    with torch.no_grad():
        tokens = adapter_model.image_proj(torch.cat([embeds.positive, embeds.negative]))  # [2, T, C]
        return adapter_model.layer(layer.number)(tokens)


def expected_layer_output(tiny, layer, embeds, *, weight: float, embeds_scaling: str, swap=False):
    """text attention + the note's formula for the image term; batch rows [uncond, cond] (cond_or_uncond [1, 0])."""
    q, k, v, options = layer_inputs(tiny.model, layer.key, seed=2)
    keys, values = image_kv(tiny, layer, embeds)
    width = keys.shape[-1]
    lam = weight * width / 1280 if "penalty" in embeds_scaling else weight
    if embeds_scaling == "V only":
        keys_s, values_s, after = keys, values, weight
    elif embeds_scaling.startswith("K+V"):
        keys_s, values_s, after = lam * keys, lam * values, 1.0
    else:  # K+mean(V) w/ C penalty
        mean = values.mean(dim=1, keepdim=True)
        keys_s, values_s, after = lam * keys, values - mean + lam * mean, 1.0
    text = call_patch(None, q, k, v, options)
    # unconditional row: the negative tokens, or under the swap the image's; conditional row: the image's, or none
    uncond_side, cond_side = (0, None) if swap else (1, 0)
    rows = []
    for row, side in ((0, uncond_side), (1, cond_side)):
        if side is None:
            rows.append(text[row])
            continue
        term = by_hand_attention(q[row : row + 1], keys_s[side : side + 1], values_s[side : side + 1], options["n_heads"])
        rows.append(text[row] + after * term[0])
    return torch.stack(rows), (q, k, v, options)


@pytest.mark.parametrize("embeds_scaling", ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"])
def test_embeds_scaling_follows_the_formulas(tiny, embeds_scaling):
    embeds = embeds_of(1, 13)
    layer = layer_of_module(tiny, 0)  # a 640-wide (SDXL) or 320-wide (SD1.5) layer: the C penalty acts
    expected, (q, k, v, options) = expected_layer_output(tiny, layer, embeds, weight=0.7, embeds_scaling=embeds_scaling)
    patched = apply(tiny, embeds, weight=0.7, embeds_scaling=embeds_scaling)
    patch = patched.model_options["transformer_options"]["patches_replace"]["attn2"][layer.key]
    ours = call_patch(patch, q, k, v, options)
    assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max()


PRECISE = {  # layout: weight type → (module index, λ as a multiple of w, swapped)
    "SDXL": {
        "style transfer precise": [(3, 1.0, True), (6, 1.0, False)],
        "composition precise": [(3, 1.0, False), (6, 1.0, True), (0, 0.1, True)],
    },
    "SD1.5": {
        "style transfer precise": [(4, 0.25, True), (5, 1.0, True), (0, 1.0, False)],
        "composition precise": [(5, 1.0, False), (0, 1.0, True), (7, 0.1, True)],
    },
}


@pytest.mark.parametrize("weight_type", ["style transfer precise", "composition precise"])
def test_precise_types_swap_the_passes_where_the_note_says(tiny, weight_type):
    embeds = embeds_of(1, 14)
    patched = apply(tiny, embeds, weight=0.8, weight_type=weight_type)
    attn2 = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    for index, factor, swapped in PRECISE[tiny.layout][weight_type]:
        layer = layer_of_module(tiny, index)
        expected, (q, k, v, options) = expected_layer_output(
            tiny, layer, embeds, weight=0.8 * factor, embeds_scaling="V only", swap=swapped
        )
        ours = call_patch(attn2[layer.key], q, k, v, options)
        assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max(), (index, swapped)
        if swapped:  # the conditional row is the text attention alone, bit for bit
            assert torch.equal(ours[1], call_patch(None, q, k, v, options)[1])


@pytest.mark.parametrize(
    "options", [{"weight": 0.0}, {"block_weights": "{}"}, {"weight": 0.0, "weight_type": "style transfer"}, {"block_weights": "0:0"}]
)
def test_zero_everywhere_is_the_unpatched_model_with_no_patch(tiny, options):
    noise, start, texts = inputs(tiny.layout, 15)
    patched = apply(tiny, embeds_of(1, 16), **options)
    assert not patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2")
    assert torch.equal(comfy_denoised(patched, noise, start, texts), comfy_denoised(tiny.model, noise, start, texts))


def test_only_the_weighted_layers_are_patched(tiny):
    """SDXL style transfer: the 10 layers of up_blocks.0.attentions.1 (index 6); SD1.5: its 11 style modules."""
    patched = apply(tiny, embeds_of(1, 17), weight_type="style transfer")
    attn2 = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    modules = unet_transformer_modules(tiny.model.model.diffusion_model)
    indexes = {"SDXL": {6}, "SD1.5": {0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15}}[tiny.layout]
    expected = {layer.key for module in modules if module.index in indexes for layer in module.layers}
    assert {key for key in attn2 if len(key) == 3} == expected
    if tiny.layout == "SDXL":
        assert len(expected) == 10
