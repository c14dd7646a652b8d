"""InstantX SD3.5-Large IP-Adapter: parity with diffusers (SD3IPAdapterMixin + SD3IPAdapterJointAttnProcessor2_0)
on the same weights, through ComfyUI's real MMDiT and its sampler; and the SD3 family's detection and refusals.

A tiny MMDiT with the real joint-block layout (head width 64, RMS QK-norm, T5/CLIP widths, 3 joint blocks) in
ComfyUI's layout, converted for diffusers with comfy.utils.mmdit_to_diffusers; random adapter files with the
official key names (`ip-adapter.bin`, nested as the official file, or flat .safetensors), loaded by diffusers' own
loader from the file. Tolerance: fp32, |Δ| <= 2e-5 · max|IP term| (the change the adapter makes); λ = 0 is
bit-exact.
"""

import types

import pytest
import torch
from dit_parity import RELATIVE_TOLERANCE, OneStepSampling, check_parity, halving_block_patch
from safetensors.torch import save_file
from tiny_flux import tiny_flux_config, tiny_flux_model
from tiny_models import nested, tiny_comfy_model
from tiny_sd3 import (
    SD3_POOLED_WIDTH,
    SD3_TEXT_WIDTH,
    SIGLIP_WIDTH,
    TINY_RESAMPLER,
    instantx_adapter_state_dict,
    sd3_diffusers_twin,
    tiny_sd3_config,
    tiny_sd3_model,
)

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.memory import manage

LATENT = 8  # latent side: 4 × 4 = 16 image tokens after the 2 × 2 patches
TEXT_TOKENS = 8
IMAGE_TOKENS = 9  # SigLIP so400m-384 gives 729; any count goes through the resampler
PENULTIMATE = "penultimate_hidden_states"
PARITY_ERRORS: list[tuple[str, float]] = []  # printed at the end of the run by conftest
CONFIG = tiny_sd3_config()
HIDDEN = CONFIG["depth"] * 64
WEIGHT_NAME = {"bin": "ip-adapter.bin", "safetensors": "ip-adapter.safetensors"}


@pytest.fixture(scope="module")
def sd3(comfy_host):
    model = tiny_sd3_model(CONFIG, seed=1)
    return model, sd3_diffusers_twin(model, CONFIG)


def adapter_file(directory, name: str, *, seed: int, container: str = "bin"):
    """A random adapter in directory/name/, as the official `ip-adapter.bin` (nested) or as flat .safetensors."""
    path = directory / name
    path.mkdir()
    weights = instantx_adapter_state_dict(hidden_size=HIDDEN, joint_blocks=CONFIG["depth"], seed=seed)
    if container == "bin":
        torch.save(nested(weights), str(path / WEIGHT_NAME["bin"]))
    else:
        save_file(weights, str(path / WEIGHT_NAME["safetensors"]))
    return path / WEIGHT_NAME[container]


def diffusers_load(transformer, path):
    """diffusers' own loader on the file: sets the transformer's processors and its image_proj (after removing an
    earlier test's: diffusers' loader counts the resampler's attention layers as blocks if it is still there)."""
    from diffusers.loaders.ip_adapter import SD3IPAdapterMixin
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    transformer.image_proj = None
    transformer.set_attn_processor(JointAttnProcessor2_0())
    pipeline = types.SimpleNamespace(transformer=transformer)
    SD3IPAdapterMixin.load_ip_adapter(pipeline, str(path.parent), weight_name=path.name)
    return pipeline


def set_scale(pipeline, scale: float) -> None:
    from diffusers.loaders.ip_adapter import SD3IPAdapterMixin

    SD3IPAdapterMixin.set_ip_adapter_scale(pipeline, scale)


class StackedProjections(torch.nn.Module):
    """Two adapters' own diffusers resamplers: each reads its embeds; the blocks get both outputs."""

    def __init__(self, projections):
        super().__init__()
        self.projections = torch.nn.ModuleList(projections)

    def forward(self, embeds, timestep):
        outputs = [projection(rows, timestep) for projection, rows in zip(self.projections, embeds, strict=True)]
        return tuple(tokens for tokens, _ in outputs), tuple(time for _, time in outputs)


class StackedProcessors(torch.nn.Module):
    """Two adapters' own diffusers processors in one block. Each returns to_out(attn + λ_i·ip_i); to_out is
    affine, so Σ_i out_i − (n − 1)·out_plain = to_out(attn + Σ_i λ_i·ip_i): the image prompts' sum."""

    def __init__(self, processors):
        super().__init__()
        self.processors = torch.nn.ModuleList(processors)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, ip_hidden_states=None, temb=None):
        plain = self.processors[0](attn, hidden_states, encoder_hidden_states)  # no ip_hidden_states: plain joint attention
        outputs = [
            processor(attn, hidden_states, encoder_hidden_states, ip_hidden_states=tokens, temb=time)
            for processor, tokens, time in zip(self.processors, ip_hidden_states, temb, strict=True)
        ]
        image = sum(output[0] for output in outputs) - (len(outputs) - 1) * plain[0]
        return image, plain[1]


def diffusers_denoised(transformer, x, sigma, text, pooled, image_rows):
    """x − σ·v with v from diffusers at timestep 1000·σ (the flow model's); image_rows `[B, S, 1152]` or None."""
    kwargs = {} if image_rows is None else {"joint_attention_kwargs": {"ip_adapter_image_embeds": image_rows}}
    with torch.no_grad():
        v = transformer(
            hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
            timestep=(sigma * 1000).expand(x.shape[0]), **kwargs,
        ).sample  # fmt: skip
    return x - sigma * v


def comfy_denoised(model, x, sigma, text, pooled, cond_or_uncond):
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=cond_or_uncond, sigmas=sigma.expand(x.shape[0]))
    with torch.no_grad():
        return model.model.apply_model(x, sigma.expand(x.shape[0]), c_crossattn=text, y=pooled, transformer_options=options)


def inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, LATENT, LATENT, generator=generator)
    text = torch.randn(2, TEXT_TOKENS, SD3_TEXT_WIDTH, generator=generator)
    pooled = torch.randn(2, SD3_POOLED_WIDTH, generator=generator)
    return generator, x, text, pooled


def image_embeds(generator):
    positive = torch.randn(1, IMAGE_TOKENS, SIGLIP_WIDTH, generator=generator)
    negative = torch.randn(1, IMAGE_TOKENS, SIGLIP_WIDTH, generator=generator)
    return positive, negative, make_embeds(positive, negative, clip_output=PENULTIMATE)


def check(case, ours, theirs, plain):
    check_parity(PARITY_ERRORS, case, ours, theirs, plain)


def apply(model, adapter, embeds, weight, *, start_at=0.0, end_at=1.0):
    return apply_image_prompt(model, adapter, manage(adapter).weights_patcher, embeds, weight=weight, start_at=start_at, end_at=end_at)


@pytest.mark.parametrize("container", ["bin", "safetensors"])
def test_instantx_sd3_matches_diffusers(sd3, tmp_path, container):
    """Rows [uncond, cond], each with its own text and image embeds; λ ∈ {0, 0.6, 1}; two steps (the tokens
    depend on the timestep)."""
    model, transformer = sd3
    path = adapter_file(tmp_path, "a", seed=3, container=container)
    pipeline = diffusers_load(transformer, path)
    adapter = load_adapter(str(path))
    generator, x, text, pooled = inputs(5)
    positive, negative, embeds = image_embeds(generator)
    rows = torch.cat([negative, positive])  # [2, S, 1152]: uncond row, cond row
    for scale in (0.0, 0.6, 1.0):
        set_scale(pipeline, scale)
        patched = apply(model, adapter, embeds, scale)
        for sigma in (torch.tensor(0.7), torch.tensor(0.3)):
            plain = comfy_denoised(model, x, sigma, text, pooled, [1, 0])
            ours = comfy_denoised(patched, x, sigma, text, pooled, [1, 0])
            theirs = diffusers_denoised(transformer, x, sigma, text, pooled, rows)
            if scale == 0.0:
                assert torch.equal(ours, plain), "λ = 0 must give exactly the unpatched output"
                assert (ours - theirs).abs().max() <= RELATIVE_TOLERANCE * theirs.abs().max()
            else:
                check(f"SD3 {container} λ={scale} σ={sigma.item():.1f}", ours, theirs, plain)


def test_stacked_instantx_adapters_match_diffusers_processors(sd3, tmp_path):
    """Two Apply calls = the sum of both adapters' image prompts, each computed by diffusers' own resampler and
    processor (diffusers' SD3 loader holds one adapter; StackedProcessors adds their terms)."""
    model, transformer = sd3
    patched, rows, projections, processors = model, [], [], []
    generator, x, text, pooled = inputs(9)
    for name, scale, seed in (("a", 0.6, 7), ("b", 1.0, 8)):
        path = adapter_file(tmp_path, name, seed=seed)
        pipeline = diffusers_load(transformer, path)
        set_scale(pipeline, scale)
        projections.append(transformer.image_proj)
        processors.append([block.attn.processor for block in transformer.transformer_blocks])
        adapter = load_adapter(str(path))
        positive, negative, embeds = image_embeds(generator)
        patched = apply(patched, adapter, embeds, scale)
        rows.append(torch.cat([negative, positive]))
    transformer.image_proj = StackedProjections(projections)
    for index, block in enumerate(transformer.transformer_blocks):
        block.attn.set_processor(StackedProcessors([each[index] for each in processors]))
    sigma = torch.tensor(0.8)
    ours = comfy_denoised(patched, x, sigma, text, pooled, [1, 0])
    theirs = diffusers_denoised(transformer, x, sigma, text, pooled, tuple(rows))
    check("SD3 stacked 0.6 + 1.0", ours, theirs, comfy_denoised(model, x, sigma, text, pooled, [1, 0]))


def test_sampler_path_with_cfg_matches_diffusers(sd3, tmp_path):
    """ComfyUI's sampler (sample_custom, one Euler step from σ = 0.6 to 0, which lands on the denoised prediction;
    cfg 2: the batch of cond and uncond rows that calc_cond_batch builds) = diffusers' denoised cond and uncond
    predictions combined the same way."""
    model, transformer = sd3
    path = adapter_file(tmp_path, "a", seed=11)
    pipeline = diffusers_load(transformer, path)
    set_scale(pipeline, 1.0)
    adapter = load_adapter(str(path))
    generator, x, text, pooled = inputs(12)
    positive, negative, embeds = image_embeds(generator)
    patched = apply(model, adapter, embeds, 1.0)
    sampling = OneStepSampling(model, x, text, pooled, generator)
    ours, plain = sampling.denoised(patched), sampling.denoised(model)
    both = diffusers_denoised(
        transformer, sampling.model_input(), torch.tensor(0.6), torch.cat([text[:1], text[1:]]),
        torch.cat([pooled[:1], pooled[1:]]), torch.cat([positive, negative]),
    )  # fmt: skip
    theirs = sampling.guided(both)
    check("SD3 sampler cfg 2", ours, theirs, plain)


def test_step_range_leaves_other_steps_untouched(sd3, tmp_path):
    """start_at = 0.5: the early (high-sigma) steps are exactly the plain model's, the late ones are not."""
    model, _ = sd3
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=21)))
    generator, x, text, pooled = inputs(22)
    _, _, embeds = image_embeds(generator)
    patched = apply(model, adapter, embeds, 1.0, start_at=0.5, end_at=1.0)
    start = float(model.get_model_object("model_sampling").percent_to_sigma(0.5))
    early, late = torch.tensor(min(0.999, start + 0.05)), torch.tensor(start / 2)
    assert torch.equal(comfy_denoised(patched, x, early, text, pooled, [0, 1]), comfy_denoised(model, x, early, text, pooled, [0, 1]))
    assert (comfy_denoised(patched, x, late, text, pooled, [0, 1]) - comfy_denoised(model, x, late, text, pooled, [0, 1])).abs().max() > 1e-3


def test_other_packs_dit_patch_keeps_working(sd3, tmp_path):
    """A `dit` double-block patch set by another pack still runs, with our image-prompt block as its original block."""
    model, _ = sd3
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=13)))
    generator, x, text, pooled = inputs(14)
    _, _, embeds = image_embeds(generator)
    calls = []
    foreign = halving_block_patch(calls)

    theirs = model.clone()
    for index in range(CONFIG["depth"]):
        theirs.set_model_patch_replace(foreign, "dit", "double_block", index)
    sigma = torch.tensor(0.5)
    foreign_only = comfy_denoised(theirs, x, sigma, text, pooled, [0, 1])
    at_zero = apply(theirs, adapter, embeds, 0.0)
    assert torch.equal(comfy_denoised(at_zero, x, sigma, text, pooled, [0, 1]), foreign_only)
    calls.clear()
    both = apply(theirs, adapter, embeds, 1.0)
    with_ip = comfy_denoised(both, x, sigma, text, pooled, [0, 1])
    assert len(calls) == CONFIG["depth"], "the other pack's patch must run once per joint block"
    assert (with_ip - foreign_only).abs().max() > 1e-3
    ours_only = apply(model, adapter, embeds, 1.0)
    assert (comfy_denoised(ours_only, x, sigma, text, pooled, [0, 1]) - with_ip).abs().max() > 1e-3


def test_clones_share_the_adapter_weights(sd3, tmp_path):
    """A clone of a patched model copies no weights: its patches are the same objects."""
    model, _ = sd3
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=23)))
    _, _, embeds = image_embeds(torch.Generator().manual_seed(24))
    patched = apply(model, adapter, embeds, 1.0)
    clone = patched.clone()
    ours = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    theirs = clone.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(theirs[key] is ours[key] for key in ours)
    assert [patcher.model for patcher in ours[("double_block", 0)].models()] == [adapter.model]


def test_sd3_file_is_detected(comfy_host, tmp_path):
    spec = load_adapter(str(adapter_file(tmp_path, "a", seed=15))).spec
    assert (spec.base, spec.num_tokens, spec.hidden_size, spec.joint_blocks, spec.embedding_dim, spec.image_encoder) == (
        "SD3.5", TINY_RESAMPLER["num_tokens"], HIDDEN, CONFIG["depth"], SIGLIP_WIDTH, "SigLIP",
    )  # fmt: skip
    assert (spec.resampler_dim, spec.resampler_depth, spec.resampler_heads, spec.timestep_dim) == (128, 4, 2, 320)


def test_damaged_sd3_file_is_refused(comfy_host, tmp_path):
    weights = instantx_adapter_state_dict(hidden_size=HIDDEN, joint_blocks=2, seed=16)
    del weights["ip_adapter.1.norm_ip_k.weight"]
    torch.save(nested(weights), str(tmp_path / "cut.bin"))
    with pytest.raises(IPAdapterError, match="cut.bin.*damaged"):
        load_adapter(str(tmp_path / "cut.bin"))


def test_adapter_and_model_families_must_match(sd3, tmp_path):
    model, _ = sd3
    sd3_adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=17)))
    _, _, embeds = image_embeds(torch.Generator().manual_seed(18))
    with pytest.raises(IPAdapterError, match="SD3.5 IP-Adapter but it was applied to a model that is not SD3"):
        apply_image_prompt(tiny_comfy_model("SD1.5", seed=0), sd3_adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    with pytest.raises(IPAdapterError, match="SD3.5 IP-Adapter but it was applied to a model that is not SD3"):
        apply_image_prompt(tiny_flux_model(tiny_flux_config(), seed=0), sd3_adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    deeper = tiny_sd3_model(tiny_sd3_config(blocks=4), seed=2)
    with pytest.raises(IPAdapterError, match="3 joint blocks of width 192, but this SD3 model has 4 of width \\[256\\]"):
        apply_image_prompt(deeper, sd3_adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0)
