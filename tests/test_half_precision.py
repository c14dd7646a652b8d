"""Half precision, as ComfyUI runs it on a CPU with --force-fp16 (fp16 UNet) or --bf16-unet (bf16 UNet): the
image tokens and K'/V' follow the layer's dtype, λ = 0 stays bit-exact, and the image-prompt term (the patched
output minus the unpatched one, in the same precision) matches fp32 references on the same (rounded) weights within a
tolerance that fits the dtype, measured against the term itself, not the whole output (which would hide a term wrong
by several percent in bf16):

- one layer: the patched attention in half precision against the same patch in fp32 on the same inputs,
  |Δ term| <= 2 eps · max|term| (eps: the dtype's machine epsilon; about 1.1 to 1.4 eps seen);
- the whole UNet: against diffusers' IP-Adapter in fp32, |Δ term| <= 5 eps · max|term| (the rounding of every later
  layer adds to it; about 3.6 to 3.9 eps seen), and the patched output no further from diffusers' than twice the
  unpatched half-precision UNet's distance from diffusers' plain UNet (the adapter adds no error of its own).
"""

import comfy_sampling_helpers as helpers
import pytest
import torch
from safetensors.torch import save_file
from test_parity_diffusers import clip_like, comfy_forward, diffusers_forward
from tiny_models import SD15_TEXT_WIDTH, adapter_state_dict, diffusers_twin, layer_hidden_sizes, nested, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.memory import manage
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
HALF_ERRORS: list[tuple[str, float]] = []  # relative errors, for the report


@pytest.fixture(scope="module")
def setup(comfy_host, tmp_path_factory):
    """fp32, fp16 and bf16 copies of one tiny SD1.5 UNet (the fp32 one holds the fp16-rounded values, so every copy
    starts from the same numbers) and one random base adapter stored in fp16."""
    models = {name: tiny_comfy_model("SD1.5", seed=7, dtype=dtype) for name, dtype in DTYPES.items()}
    models["fp32"] = tiny_comfy_model("SD1.5", seed=7)
    models["fp32"].model.diffusion_model.load_state_dict(models["fp16"].model.diffusion_model.state_dict())
    flat = adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(models["fp32"]), text_width=SD15_TEXT_WIDTH, seed=9,
                              dtype=torch.float16)  # fmt: skip
    path = tmp_path_factory.mktemp("half") / "ip-adapter_sd15.safetensors"
    save_file(flat, str(path))
    adapter = load_adapter(str(path))
    generator = torch.Generator().manual_seed(3)
    embeds = make_embeds(clip_like("linear", 1, generator), torch.zeros(1, 1024), clip_output="image_embeds")
    return models, flat, adapter, manage(adapter).weights_patcher, embeds


def patched(setup, name, *, weight):
    models, _, adapter, weights, embeds = setup
    return apply_image_prompt(models[name], adapter, weights, embeds, weight=weight, start_at=0.0, end_at=1.0)


@pytest.mark.parametrize("name", list(DTYPES))
def test_weight_zero_is_bit_exact_and_the_prompt_acts_in_half_precision(setup, name):
    models = setup[0]
    plain = helpers.sample(models[name], cfg=3.0)
    assert helpers.sample(patched(setup, name, weight=0.0), cfg=3.0).equal(plain)
    with_prompt = helpers.sample(patched(setup, name, weight=1.0), cfg=3.0)
    assert with_prompt.isfinite().all()
    assert (with_prompt - plain).abs().max() > 1e-2 * plain.abs().max()


def term_error(ours, ours_plain, reference, reference_plain) -> float:
    """The largest error of the image-prompt term, relative to the largest value of the reference term."""
    reference_term = reference - reference_plain
    return ((ours.float() - ours_plain.float() - reference_term).abs().max() / reference_term.abs().max()).item()


@pytest.mark.parametrize("name", list(DTYPES))
def test_one_layer_in_half_precision_matches_fp32(setup, name):
    """One patch called in fp32, then in half precision (as with a manual-cast model): the tokens and K'/V' are
    held per dtype, so the half call computes in half precision from the same weights."""
    dtype, eps = DTYPES[name], torch.finfo(DTYPES[name]).eps
    model = patched(setup, "fp32", weight=0.8)
    worst = 0.0
    for key in (("input", 1, 0), ("middle", 0, 0), ("output", 11, 0)):
        q, k, v, options = helpers.layer_inputs(model, key)
        q, k, v = (tensor.to(dtype) for tensor in (q, k, v))  # the same values in both precisions
        patch = helpers.replace_patch(model, key)
        reference = helpers.call_patch(patch, q.float(), k.float(), v.float(), options)
        reference_plain = helpers.call_patch(None, q.float(), k.float(), v.float(), options)
        ours = helpers.call_patch(patch, q, k, v, options)
        assert ours.dtype == dtype
        worst = max(worst, term_error(ours, helpers.call_patch(None, q, k, v, options), reference, reference_plain))
    HALF_ERRORS.append((f"layer {name}", worst))
    assert worst <= 2 * eps, f"relative |Δ term| = {worst:.3g}"


@pytest.mark.parametrize("name", list(DTYPES))
def test_the_unet_in_half_precision_matches_diffusers_fp32(setup, name):
    eps = torch.finfo(DTYPES[name]).eps
    models, flat, *_ = setup
    reference = diffusers_twin(models["fp32"], "SD1.5")
    reference._load_ip_adapter_weights([nested(flat)], low_cpu_mem_usage=False)
    embeds = setup[4]
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([400.0, 400.0])
    text = torch.randn(2, 77, SD15_TEXT_WIDTH, generator=generator)
    image_rows = torch.stack([embeds.negative, embeds.positive])  # [2, 1, E]: rows [unconditional, conditional]

    def relative_error(ours, theirs):
        return ((ours.float() - theirs).abs().max() / theirs.abs().max()).item()

    half = {"x": x.to(DTYPES[name]), "t": t, "text": text.to(DTYPES[name]), "cond_or_uncond": [1, 0]}
    ours_plain, ours = comfy_forward(models[name], **half), comfy_forward(patched(setup, name, weight=0.8), **half)
    theirs_plain, theirs = (diffusers_forward(reference, x, t, text, image_rows, scale) for scale in (0.0, 0.8))
    error = term_error(ours, ours_plain, theirs, theirs_plain)
    HALF_ERRORS.append((f"UNet {name}", error))
    assert error <= 5 * eps, f"relative |Δ term| = {error:.3g}"
    output_error, plain_error = relative_error(ours, theirs), relative_error(ours_plain, theirs_plain)
    assert output_error <= 2 * plain_error, f"the adapter adds error: {output_error:.3g} against {plain_error:.3g} without it"
