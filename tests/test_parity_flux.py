"""XLabs Flux IP-Adapter: parity with diffusers (FluxIPAdapterMixin + FluxIPAdapterAttnProcessor) on the same
weights, through ComfyUI's real Flux model and its sampler; and the Flux family's detection and refusals.

A tiny Flux with the real block layout (head dim 128, T5/CLIP widths, 2 double + 2 single blocks) in ComfyUI's
layout, converted for diffusers with comfy.utils.flux_to_diffusers; random adapter files with the official key
names, loaded by diffusers' own loader from the file. Tolerance: fp32, |Δ| <= 2e-5 · max|IP term| (the change the
adapter makes); λ = 0 is bit-exact.
"""

import types

import pytest
import torch
from dit_parity import RELATIVE_TOLERANCE, OneStepSampling, check_parity, halving_block_patch
from safetensors.torch import save_file
from tiny_flux import (
    FLUX_POOLED_WIDTH,
    FLUX_TEXT_WIDTH,
    flux_diffusers_twin,
    tiny_flux_config,
    tiny_flux_model,
    xlabs_adapter_state_dict,
)
from tiny_models import tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.memory import manage

LATENT = 8  # latent side: 4 × 4 = 16 image tokens after the 2 × 2 patches
TEXT_TOKENS = 8
PARITY_ERRORS: list[tuple[str, float]] = []  # printed at the end of the run by conftest
CONFIG = tiny_flux_config()
HIDDEN = CONFIG["hidden_size"]


@pytest.fixture(scope="module")
def flux(comfy_host):
    model = tiny_flux_model(CONFIG, seed=1)
    return model, flux_diffusers_twin(model, CONFIG)


def adapter_file(directory, name: str, *, seed: int):
    path = directory / name
    path.mkdir()
    save_file(xlabs_adapter_state_dict(hidden_size=HIDDEN, double_blocks=CONFIG["depth"], seed=seed), str(path / "ip_adapter.safetensors"))
    return path


def with_adapters(transformer, directories):
    """The diffusers twin with these adapter files loaded by diffusers' own loader (a fresh processor set)."""
    from diffusers.loaders.ip_adapter import FluxIPAdapterMixin

    pipeline = types.SimpleNamespace(transformer=transformer)
    FluxIPAdapterMixin.load_ip_adapter(
        pipeline,
        [str(directory) for directory in directories],
        weight_name=["ip_adapter.safetensors"] * len(directories),
        subfolder=[""] * len(directories),
        image_encoder_pretrained_model_name_or_path=None,
    )
    return pipeline


def packed(x):
    return x.view(x.shape[0], 16, LATENT // 2, 2, LATENT // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], -1, 64)  # [B, L, 64]


def unpacked(v):
    side = LATENT // 2
    return v.reshape(v.shape[0], side, side, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(v.shape[0], 16, LATENT, LATENT)  # [B, 16, h, w]


def diffusers_denoised(transformer, x, sigma, text, pooled, image_rows):
    """x − σ·v, with v from diffusers on the packed latent; image_rows: per adapter `[B, 1, 768]`, or None."""
    side = LATENT // 2
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    kwargs = {} if image_rows is None else {"joint_attention_kwargs": {"ip_adapter_image_embeds": image_rows}}
    with torch.no_grad():
        v = transformer(
            hidden_states=packed(x), encoder_hidden_states=text, pooled_projections=pooled,
            timestep=sigma.expand(x.shape[0]), img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(text.shape[1], 3),
            guidance=torch.full((x.shape[0],), 3.5), **kwargs,
        ).sample  # fmt: skip
    return x - sigma * unpacked(v)


def comfy_denoised(model, x, sigma, text, pooled, cond_or_uncond):
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=cond_or_uncond, sigmas=sigma.expand(x.shape[0]))
    with torch.no_grad():
        return model.model.apply_model(
            x, sigma.expand(x.shape[0]), c_crossattn=text, y=pooled, guidance=torch.full((x.shape[0],), 3.5),
            transformer_options=options,
        )  # fmt: skip


def inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, LATENT, LATENT, generator=generator)
    text = torch.randn(2, TEXT_TOKENS, FLUX_TEXT_WIDTH, generator=generator)
    pooled = torch.randn(2, FLUX_POOLED_WIDTH, generator=generator)
    return generator, x, text, pooled


def check(case, ours, theirs, plain):
    check_parity(PARITY_ERRORS, case, ours, theirs, plain)


def test_xlabs_flux_matches_diffusers(flux, tmp_path):
    """Rows [uncond, cond], each with its own text and image embeds; λ ∈ {0, 0.6, 1}."""
    model, transformer = flux
    pipeline = with_adapters(transformer, [adapter_file(tmp_path, "a", seed=3)])
    adapter = load_adapter(str(tmp_path / "a" / "ip_adapter.safetensors"))
    weights = manage(adapter).weights_patcher
    generator, x, text, pooled = inputs(5)
    positive, negative = torch.randn(1, 768, generator=generator), torch.randn(1, 768, generator=generator)
    embeds = make_embeds(positive, negative, clip_output="image_embeds")
    rows = [torch.stack([negative, positive])]  # [2, 1, 768]: uncond row, cond row
    sigma = torch.tensor(0.6)
    plain = comfy_denoised(model, x, sigma, text, pooled, [1, 0])
    for scale in (0.0, 0.6, 1.0):
        from diffusers.loaders.ip_adapter import FluxIPAdapterMixin

        FluxIPAdapterMixin.set_ip_adapter_scale(pipeline, scale)
        patched = apply_image_prompt(model, adapter, weights, embeds, weight=scale, start_at=0.0, end_at=1.0)
        ours = comfy_denoised(patched, x, sigma, text, pooled, [1, 0])
        theirs = diffusers_denoised(transformer, x, sigma, text, pooled, rows)
        if scale == 0.0:
            assert torch.equal(ours, plain), "λ = 0 must give exactly the unpatched output"
            assert (ours - theirs).abs().max() <= RELATIVE_TOLERANCE * theirs.abs().max()
        else:
            check(f"Flux λ={scale}", ours, theirs, plain)


def test_stacked_xlabs_adapters_match_diffusers_multi_adapter(flux, tmp_path):
    """Two Apply calls = diffusers with two adapters loaded, scales [0.6, 1.0]."""
    model, transformer = flux
    pipeline = with_adapters(transformer, [adapter_file(tmp_path, "a", seed=7), adapter_file(tmp_path, "b", seed=8)])
    generator, x, text, pooled = inputs(9)
    patched, rows = model, []
    for name, scale in (("a", 0.6), ("b", 1.0)):
        adapter = load_adapter(str(tmp_path / name / "ip_adapter.safetensors"))
        positive, negative = torch.randn(1, 768, generator=generator), torch.randn(1, 768, generator=generator)
        embeds = make_embeds(positive, negative, clip_output="image_embeds")
        patched = apply_image_prompt(patched, adapter, manage(adapter).weights_patcher, embeds, weight=scale, start_at=0.0, end_at=1.0)
        rows.append(torch.stack([negative, positive]))
    from diffusers.loaders.ip_adapter import FluxIPAdapterMixin

    FluxIPAdapterMixin.set_ip_adapter_scale(pipeline, [0.6, 1.0])
    sigma = torch.tensor(0.8)
    ours = comfy_denoised(patched, x, sigma, text, pooled, [1, 0])
    theirs = diffusers_denoised(transformer, x, sigma, text, pooled, rows)
    check("Flux stacked 0.6 + 1.0", ours, theirs, comfy_denoised(model, x, sigma, text, pooled, [1, 0]))


def test_sampler_path_with_cfg_matches_diffusers(flux, tmp_path):
    """ComfyUI's sampler (sample_custom, one Euler step from σ = 0.6 to 0, which lands on the denoised prediction;
    cfg 2: the batch of cond and uncond rows that calc_cond_batch builds) = diffusers' denoised cond and uncond
    predictions combined the same way."""
    model, transformer = flux
    pipeline = with_adapters(transformer, [adapter_file(tmp_path, "a", seed=11)])
    adapter = load_adapter(str(tmp_path / "a" / "ip_adapter.safetensors"))
    generator, x, text, pooled = inputs(12)
    positive, negative = torch.randn(1, 768, generator=generator), torch.randn(1, 768, generator=generator)
    embeds = make_embeds(positive, negative, clip_output="image_embeds")
    patched = apply_image_prompt(model, adapter, manage(adapter).weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    from diffusers.loaders.ip_adapter import FluxIPAdapterMixin

    FluxIPAdapterMixin.set_ip_adapter_scale(pipeline, 1.0)
    sampling = OneStepSampling(model, x, text, pooled, generator)
    ours, plain = sampling.denoised(patched), sampling.denoised(model)
    both = diffusers_denoised(
        transformer, sampling.model_input(), torch.tensor(0.6), torch.cat([text[:1], text[1:]]),
        torch.cat([pooled[:1], pooled[1:]]), [torch.stack([positive, negative])],
    )  # fmt: skip
    theirs = sampling.guided(both)
    check("Flux sampler cfg 2", ours, theirs, plain)


def test_other_packs_dit_patch_keeps_working(flux, tmp_path):
    """A `dit` double-block patch set by another pack still runs (with our image-prompt block as its original block)."""
    model, _ = flux
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=13) / "ip_adapter.safetensors"))
    generator, x, text, pooled = inputs(14)
    embeds = make_embeds(torch.randn(1, 768, generator=generator), torch.zeros(1, 768), clip_output="image_embeds")
    calls = []
    foreign = halving_block_patch(calls)

    theirs = model.clone()
    for index in range(CONFIG["depth"]):
        theirs.set_model_patch_replace(foreign, "dit", "double_block", index)
    sigma = torch.tensor(0.5)
    foreign_only = comfy_denoised(theirs, x, sigma, text, pooled, [0, 1])
    at_zero = apply_image_prompt(theirs, adapter, manage(adapter).weights_patcher, embeds, weight=0.0, start_at=0.0, end_at=1.0)
    assert torch.equal(comfy_denoised(at_zero, x, sigma, text, pooled, [0, 1]), foreign_only)
    calls.clear()
    both = apply_image_prompt(theirs, adapter, manage(adapter).weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    with_ip = comfy_denoised(both, x, sigma, text, pooled, [0, 1])
    assert len(calls) == CONFIG["depth"], "the other pack's patch must run once per double block"
    assert (with_ip - foreign_only).abs().max() > 1e-3
    ours_only = apply_image_prompt(model, adapter, manage(adapter).weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    assert (comfy_denoised(ours_only, x, sigma, text, pooled, [0, 1]) - with_ip).abs().max() > 1e-3


def _qkv_calls(model) -> list:
    """Records each call of the double blocks' image-stream qkv projection (the costly part of the query)."""
    calls = []
    for block in model.model.diffusion_model.double_blocks:
        block.img_attn.qkv.register_forward_hook(lambda module, inputs, output: calls.append(1))
    return calls


def test_the_image_query_is_the_blocks_own_not_computed_again(flux, tmp_path):
    """The patch reads the query the block's QK-norm computes: one qkv projection per double block, as unpatched."""
    model, _ = flux
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=15) / "ip_adapter.safetensors"))
    generator, x, text, pooled = inputs(16)
    embeds = make_embeds(torch.randn(1, 768, generator=generator), torch.zeros(1, 768), clip_output="image_embeds")
    patched = apply_image_prompt(model.clone(), adapter, manage(adapter).weights_patcher, embeds, weight=1.0,
                                      start_at=0.0, end_at=1.0)  # fmt: skip
    measured = tiny_flux_model(CONFIG, seed=1)  # the fixture's weights, with hooks of its own
    calls = _qkv_calls(measured)
    comfy_denoised(measured, x, torch.tensor(0.5), text, pooled, [0, 1])
    plain_calls = len(calls)
    patched_measured = apply_image_prompt(measured, adapter, manage(adapter).weights_patcher, embeds,
                                               weight=1.0, start_at=0.0, end_at=1.0)  # fmt: skip
    calls.clear()
    ours = comfy_denoised(patched_measured, x, torch.tensor(0.5), text, pooled, [0, 1])
    assert plain_calls == CONFIG["depth"] and len(calls) == plain_calls, (plain_calls, len(calls))
    assert torch.equal(ours, comfy_denoised(patched, x, torch.tensor(0.5), text, pooled, [0, 1]))


def test_a_block_run_twice_by_another_pack_reads_the_query_of_each_run(flux, tmp_path):
    """Another pack's patch that runs the block twice (a trial run on copies, then the real one) calls our
    image-prompt block twice, each run with the query of its own input: the same result as a patch that runs the
    block once."""
    model, _ = flux
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=17) / "ip_adapter.safetensors"))
    generator, x, text, pooled = inputs(18)
    embeds = make_embeds(torch.randn(1, 768, generator=generator), torch.zeros(1, 768), clip_output="image_embeds")

    def twice(args, extra):  # a trial run on copies, then the block on its own arguments (changed in place)
        extra["original_block"]({**args, "img": args["img"].clone(), "txt": args["txt"].clone()})
        return extra["original_block"](args)

    def once(args, extra):
        return extra["original_block"](args)

    results = []
    for foreign in (once, twice):
        theirs = model.clone()
        for index in range(CONFIG["depth"]):
            theirs.set_model_patch_replace(foreign, "dit", "double_block", index)
        both = apply_image_prompt(theirs, adapter, manage(adapter).weights_patcher, embeds, weight=1.0,
                                       start_at=0.0, end_at=1.0)  # fmt: skip
        results.append(comfy_denoised(both, x, torch.tensor(0.5), text, pooled, [0, 1]))
    plain = comfy_denoised(model, x, torch.tensor(0.5), text, pooled, [0, 1])
    assert (results[0] - plain).abs().max() > 1e-3
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-6 * results[0].abs().max().item())


def test_flux_file_is_detected(comfy_host, tmp_path):
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=15) / "ip_adapter.safetensors"))
    spec = adapter.spec
    assert (spec.base, spec.num_tokens, spec.hidden_size, spec.double_blocks, spec.embedding_dim, spec.image_encoder) == (
        "Flux", 4, HIDDEN, CONFIG["depth"], 768, "ViT-L",
    )  # fmt: skip


def test_damaged_flux_file_is_refused(comfy_host, tmp_path):
    weights = xlabs_adapter_state_dict(hidden_size=HIDDEN, double_blocks=2, seed=16)
    del weights["double_blocks.1.processor.ip_adapter_double_stream_v_proj.bias"]
    save_file(weights, str(tmp_path / "cut.safetensors"))
    with pytest.raises(IPAdapterError, match="cut.safetensors.*damaged"):
        load_adapter(str(tmp_path / "cut.safetensors"))


def test_adapter_and_model_families_must_match(flux, tmp_path):
    model, _ = flux
    flux_adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=17) / "ip_adapter.safetensors"))
    embeds = make_embeds(torch.randn(1, 768), torch.zeros(1, 768), clip_output="image_embeds")
    unet = tiny_comfy_model("SD1.5", seed=0)
    with pytest.raises(IPAdapterError, match="Flux IP-Adapter but it was applied to a model that is not Flux"):
        apply_image_prompt(unet, flux_adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    deeper = tiny_flux_model(tiny_flux_config(double_blocks=3, single_blocks=1), seed=2)
    with pytest.raises(IPAdapterError, match="2 double blocks of width 256, but this Flux model has 3"):
        apply_image_prompt(deeper, flux_adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0)


def test_double_block_weights_match_diffusers_per_block_scales(flux, tmp_path):
    """block_weights "0:1.0, 1:0.5" on Flux = diffusers with each double block's processor scale set alone (× weight);
    a block weighted 0 gets no patch."""
    model, transformer = flux
    pipeline = with_adapters(transformer, [adapter_file(tmp_path, "a", seed=18)])
    adapter = load_adapter(str(tmp_path / "a" / "ip_adapter.safetensors"))
    generator, x, text, pooled = inputs(19)
    positive, negative = torch.randn(1, 768, generator=generator), torch.randn(1, 768, generator=generator)
    embeds = make_embeds(positive, negative, clip_output="image_embeds")
    sigma = torch.tensor(0.7)
    plain = comfy_denoised(model, x, sigma, text, pooled, [1, 0])
    from diffusers.loaders.ip_adapter import FluxIPAdapterMixin

    FluxIPAdapterMixin.set_ip_adapter_scale(pipeline, 1.0)
    for text_weights, scales in (("0:1.0, 1:0.5", [0.8, 0.4]), ("1:1", [0.0, 0.8])):
        for index, scale in enumerate(scales):
            transformer.attn_processors[f"transformer_blocks.{index}.attn.processor"].scale = [scale]
        patched = apply_image_prompt(
            model, adapter, manage(adapter).weights_patcher, embeds, weight=0.8, start_at=0.0, end_at=1.0, block_weights=text_weights
        )
        dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
        assert sorted(dit) == [("double_block", index) for index, scale in enumerate(scales) if scale != 0]
        ours = comfy_denoised(patched, x, sigma, text, pooled, [1, 0])
        theirs = diffusers_denoised(transformer, x, sigma, text, pooled, [torch.stack([negative, positive])])
        check(f"Flux block_weights {text_weights}", ours, theirs, plain)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"weight_type": "style transfer"}, "weight_type 'style transfer'"),
        ({"embeds_scaling": "K+V"}, "embeds_scaling 'K\\+V'"),
        ({"attn_mask": torch.ones(1, 64, 64)}, "attn_mask"),
        ({"block_weights": '{"up": {"block_0": 1.0}}'}, "a Flux model has none"),
        ({"block_weights": "2:1.0"}, "no double block 2"),
    ],
)
def test_unet_only_options_are_refused_on_flux_with_what_it_takes(flux, tmp_path, options, named):
    model, _ = flux
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=20) / "ip_adapter.safetensors"))
    embeds = make_embeds(torch.randn(1, 768), torch.zeros(1, 768), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match=named) as refused:
        apply_image_prompt(model, adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0, **options)
    assert "double-block" in str(refused.value)


def sample_steps(model, *, steps: int) -> torch.Tensor:
    """KSampler's path (comfy.sample.sample, euler/simple, cfg 2) on the tiny Flux."""
    import comfy.sample

    generator, x, text, pooled = inputs(20)
    positive = [[text[:1], {"pooled_output": pooled[:1], "guidance": 3.5}]]
    negative = [[text[1:], {"pooled_output": pooled[1:], "guidance": 3.5}]]
    noise = x[:1]
    return comfy.sample.sample(
        model, noise, steps, 2.0, "euler", "simple", positive, negative, torch.zeros_like(noise), seed=0, disable_pbar=True
    )


def test_under_torch_compile_the_patched_flux_is_one_graph_compiled_once_for_every_step(flux, tmp_path, monkeypatch):
    """TorchCompileModel's wrapper (`set_torch_compile_wrapper`) around the patched Flux, with fullgraph (any graph
    break, such as registering a hook inside the call, is an error) and backend "eager" (dynamo's graphs and guards
    are what the backend is given, so the backend does not change them; inductor would compile for minutes on the
    CPU): the compiled graphs of a 4-step run are those of a 2-step run (dynamo's counters), no recompile per step.
    ComfyUI's CPU attention reads the free memory from a file (a graph break of its own): PyTorch's attention here."""
    import comfy.ldm.flux.math
    import comfy.ldm.modules.attention as comfy_attention
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from torch._dynamo.utils import counters

    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.attention_pytorch)
    monkeypatch.setattr(comfy.ldm.flux.math, "optimized_attention", comfy_attention.attention_pytorch)
    model, _ = flux
    adapter = load_adapter(str(adapter_file(tmp_path, "a", seed=19) / "ip_adapter.safetensors"))
    embeds = make_embeds(torch.randn(1, 768), torch.zeros(1, 768), clip_output="image_embeds")
    graphs = []
    for steps in (2, 4):
        patched = apply_image_prompt(model, adapter, manage(adapter).weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
        set_torch_compile_wrapper(patched, backend="eager", fullgraph=True)
        torch._dynamo.reset()
        counters.clear()
        try:
            sample_steps(patched, steps=steps)
            graphs.append(counters["stats"]["unique_graphs"])
        finally:
            torch._dynamo.reset()
    assert graphs[0] > 0, "the model must have been compiled"
    assert graphs[0] == graphs[1], f"compiled graphs: {graphs[0]} for 2 steps, {graphs[1]} for 4"
