"""InstantX FLUX.1-dev IP-Adapter: parity with its reference formula, written out here from InstantX's
`IPAFluxAttnProcessor2_0` and pipeline (diffusers does not implement this adapter), run as attention processors
of diffusers' FluxTransformer2DModel on the same weights as ComfyUI's real Flux model and sampler; the SigLIP
pooled output against transformers' `SiglipVisionModel(...).pooler_output`; detection and refusals.

The reference, per attention block n (19 double blocks then 38 single blocks in FLUX.1, here 2 + 2):

    tokens = LayerNorm(reshape(Linear₂(GELU(Linear₀(pooled SigLIP))), [T, 4096]))
    K' = RMSNorm_per_head(to_k_ip(tokens)) (no weights, eps 1e-5), V' = to_v_ip(tokens) (not normed)
    ip = λ · SDPA(q, K', V'), q = the block's image (double) or whole (single) query after QK-norm, before RoPE
    double: image attention output += ip before to_out; single: attention output += ip (before proj_out)

Tolerance: fp32, |Δ| <= 2e-5 · max|IP term|; λ = 0 and an excluded step are bit-exact.
"""

import pytest
import torch
import torch.nn.functional as F
from dit_parity import RELATIVE_TOLERANCE, CFG, OneStepSampling, check_parity, halving_block_patch
from test_parity_flux import comfy_denoised, diffusers_denoised, inputs
from tiny_flux import (
    FLUX_HEAD_DIM,
    SIGLIP_WIDTH,
    flux_diffusers_twin,
    instantx_adapter_parts,
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

PARITY_ERRORS: list[tuple[str, float]] = []  # printed at the end of the run by conftest
CONFIG = tiny_flux_config()
HIDDEN = CONFIG["hidden_size"]
LAYERS = CONFIG["depth"] + CONFIG["depth_single_blocks"]
POOLED = "siglip_pooled_output"


@pytest.fixture(scope="module")
def flux(comfy_host):
    model = tiny_flux_model(CONFIG, seed=1)
    return model, flux_diffusers_twin(model, CONFIG)


def instantx_file(directory, name: str, *, seed: int):
    """A random InstantX adapter saved as the official container: a torch pickle of nested dicts."""
    parts = instantx_adapter_parts(hidden_size=HIDDEN, layers=LAYERS, seed=seed)
    path = directory / name
    torch.save(parts, str(path))
    return str(path), parts


def reference_tokens(parts: dict, pooled: torch.Tensor) -> torch.Tensor:
    """InstantX's MLPProjModel on `[B, 1152]` -> `[B, T, 4096]`."""
    proj = parts["image_proj"]
    hidden = F.gelu(F.linear(pooled, proj["proj.0.weight"], proj["proj.0.bias"]))
    tokens = F.linear(hidden, proj["proj.2.weight"], proj["proj.2.bias"])
    width = proj["norm.weight"].shape[0]
    return F.layer_norm(tokens.reshape(pooled.shape[0], -1, width), (width,), proj["norm.weight"], proj["norm.bias"])


class ReferenceProcessor:
    """`IPAFluxAttnProcessor2_0` of one attention block, written out, for any number of InstantX adapters
    (`instantx`: (to_k_ip, to_v_ip, λ, tokens per batch row)) and, in double blocks, XLabs adapters (`xlabs`:
    (K' weight, K' bias, V' weight, V' bias, λ, tokens)), whose term diffusers' block adds at the end of the block
    (the third output)."""

    def __init__(self, instantx, xlabs=()):
        self.instantx = instantx
        self.xlabs = xlabs

    @staticmethod
    def heads(x, attn):
        return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)  # [B, H, L, D]

    @staticmethod
    def merged(x):
        return x.transpose(1, 2).flatten(2)  # [B, L, H·D]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        query = attn.norm_q(self.heads(attn.to_q(hidden_states), attn))
        key = attn.norm_k(self.heads(attn.to_k(hidden_states), attn))
        value = self.heads(attn.to_v(hidden_states), attn)
        ip = torch.zeros_like(self.merged(query))
        for k_weight, v_weight, scale, tokens in self.instantx:
            ip_key = self.heads(F.linear(tokens, k_weight), attn).float()
            ip_key = (ip_key * torch.rsqrt(ip_key.pow(2).mean(-1, keepdim=True) + 1e-5)).to(query.dtype)
            ip_value = self.heads(F.linear(tokens, v_weight), attn)
            ip = ip + scale * self.merged(F.scaled_dot_product_attention(query, ip_key, ip_value))
        end_of_block = torch.zeros_like(ip)
        for k_weight, k_bias, v_weight, v_bias, scale, tokens in self.xlabs:
            ip_key = self.heads(F.linear(tokens, k_weight, k_bias), attn)
            ip_value = self.heads(F.linear(tokens, v_weight, v_bias), attn)
            end_of_block = end_of_block + scale * self.merged(F.scaled_dot_product_attention(query, ip_key, ip_value))
        if encoder_hidden_states is not None:
            context_query = attn.norm_added_q(self.heads(attn.add_q_proj(encoder_hidden_states), attn))
            context_key = attn.norm_added_k(self.heads(attn.add_k_proj(encoder_hidden_states), attn))
            context_value = self.heads(attn.add_v_proj(encoder_hidden_states), attn)
            query, key = torch.cat([context_query, query], dim=2), torch.cat([context_key, key], dim=2)
            value = torch.cat([context_value, value], dim=2)
        query, key = apply_rotary_emb(query, image_rotary_emb), apply_rotary_emb(key, image_rotary_emb)
        out = self.merged(F.scaled_dot_product_attention(query, key, value))
        if encoder_hidden_states is None:
            return out + ip
        text_length = encoder_hidden_states.shape[1]
        context_out, out = out[:, :text_length], out[:, text_length:]
        out = attn.to_out[1](attn.to_out[0](out + ip))
        return out, attn.to_add_out(context_out), end_of_block


def set_reference(transformer, adapters, *, xlabs=(), scales=None):
    """Reference processors on every block: `adapters` = [(parts, λ, tokens [B, T, C])], block n of the file is
    double block n, then single block n − D; `scales` (optional): λ factor per file block."""
    names = list(transformer.attn_processors)
    processors = {}
    for number, name in enumerate(names):
        factor = 1.0 if scales is None else scales[number]
        instantx = [
            (parts["ip_adapter"][f"{number}.to_k_ip.weight"], parts["ip_adapter"][f"{number}.to_v_ip.weight"], scale * factor, tokens)
            for parts, scale, tokens in adapters
        ]  # fmt: skip
        double = name.startswith("transformer_blocks.")
        block_xlabs = [
            (weights[f"double_blocks.{number}.processor.ip_adapter_double_stream_k_proj.weight"],
             weights[f"double_blocks.{number}.processor.ip_adapter_double_stream_k_proj.bias"],
             weights[f"double_blocks.{number}.processor.ip_adapter_double_stream_v_proj.weight"],
             weights[f"double_blocks.{number}.processor.ip_adapter_double_stream_v_proj.bias"], scale, tokens)
            for weights, scale, tokens in xlabs
        ] if double else []  # fmt: skip
        processors[name] = ReferenceProcessor(instantx, block_xlabs)
    transformer.set_attn_processor(processors)


def reference_denoised(transformer, x, sigma, text, pooled):
    return diffusers_denoised(transformer, x, sigma, text, pooled, None)


def check(case, ours, theirs, plain):
    check_parity(PARITY_ERRORS, case, ours, theirs, plain)


def rows(tokens_by_side: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(tokens_by_side)  # [B, T, C]: one row per batch row


def test_instantx_flux_matches_the_reference(flux, tmp_path):
    """Rows [uncond, cond]; Encode's default (no negative image: every row gets the image's tokens) and a negative
    image (the uncond row gets its tokens); λ ∈ {0, 0.6, 1}."""
    model, transformer = flux
    path, parts = instantx_file(tmp_path, "ip-adapter.bin", seed=3)
    adapter = load_adapter(path)
    weights = manage(adapter).weights_patcher
    generator, x, text, pooled = inputs(5)
    image, negative = torch.randn(1, SIGLIP_WIDTH, generator=generator), torch.randn(1, SIGLIP_WIDTH, generator=generator)
    sigma = torch.tensor(0.6)
    plain = comfy_denoised(model, x, sigma, text, pooled, [1, 0])
    tokens, negative_tokens = reference_tokens(parts, image), reference_tokens(parts, negative)
    for label, embeds, by_row in (
        ("no negative image", make_embeds(image, image, clip_output=POOLED), rows([tokens, tokens])),
        ("negative image", make_embeds(image, negative, clip_output=POOLED), rows([negative_tokens, tokens])),
    ):
        for scale in (0.0, 0.6, 1.0):
            patched = apply_image_prompt(model, adapter, weights, embeds, weight=scale, start_at=0.0, end_at=1.0)
            ours = comfy_denoised(patched, x, sigma, text, pooled, [1, 0])
            set_reference(transformer, [(parts, scale, by_row)])
            theirs = reference_denoised(transformer, x, sigma, text, pooled)
            if scale == 0.0:
                assert torch.equal(ours, plain), "λ = 0 must give exactly the unpatched output"
                assert (ours - theirs).abs().max() <= RELATIVE_TOLERANCE * theirs.abs().max()
            else:
                check(f"InstantX Flux λ={scale}, {label}", ours, theirs, plain)


def test_two_stacked_instantx_adapters_and_one_beside_xlabs_match_the_reference(flux, tmp_path):
    model, transformer = flux
    generator, x, text, pooled = inputs(9)
    sigma = torch.tensor(0.8)
    plain = comfy_denoised(model, x, sigma, text, pooled, [1, 0])
    stacked, references = model, []
    for name, seed, scale in (("a.bin", 7, 0.6), ("b.bin", 8, 1.0)):
        path, parts = instantx_file(tmp_path, name, seed=seed)
        adapter = load_adapter(path)
        image = torch.randn(1, SIGLIP_WIDTH, generator=generator)
        embeds = make_embeds(image, image, clip_output=POOLED)
        stacked = apply_image_prompt(stacked, adapter, manage(adapter).weights_patcher, embeds, weight=scale, start_at=0.0, end_at=1.0)
        tokens = reference_tokens(parts, image)
        references.append((parts, scale, rows([tokens, tokens])))
    set_reference(transformer, references)
    check("InstantX Flux stacked 0.6 + 1.0", comfy_denoised(stacked, x, sigma, text, pooled, [1, 0]),
          reference_denoised(transformer, x, sigma, text, pooled), plain)  # fmt: skip

    from safetensors.torch import save_file

    xlabs_weights = xlabs_adapter_state_dict(hidden_size=HIDDEN, double_blocks=CONFIG["depth"], seed=10)
    save_file(xlabs_weights, str(tmp_path / "ip_adapter.safetensors"))
    xlabs = load_adapter(str(tmp_path / "ip_adapter.safetensors"))
    clip_image, clip_negative = torch.randn(1, 768, generator=generator), torch.randn(1, 768, generator=generator)
    xlabs_embeds = make_embeds(clip_image, clip_negative, clip_output="image_embeds")
    for first_xlabs in (True, False):
        instantx_part = references[0]
        instantx = load_adapter(str(tmp_path / "a.bin"))
        image = torch.randn(1, SIGLIP_WIDTH, generator=generator)
        embeds = make_embeds(image, image, clip_output=POOLED)
        steps = [(xlabs, xlabs_embeds, 0.7), (instantx, embeds, 0.9)]
        patched = model
        for adapter, adapter_embeds, scale in steps if first_xlabs else steps[::-1]:
            patched = apply_image_prompt(patched, adapter, manage(adapter).weights_patcher, adapter_embeds, weight=scale, start_at=0.0, end_at=1.0)
        projection = xlabs.model.image_proj
        with torch.no_grad():
            xlabs_tokens = torch.cat([projection(clip_negative), projection(clip_image)])  # [2, 4, 4096]: uncond, cond
        tokens = reference_tokens(instantx_part[0], image)
        set_reference(transformer, [(instantx_part[0], 0.9, rows([tokens, tokens]))], xlabs=[(xlabs_weights, 0.7, xlabs_tokens)])
        check(f"InstantX beside XLabs ({'XLabs' if first_xlabs else 'InstantX'} applied first)",
              comfy_denoised(patched, x, sigma, text, pooled, [1, 0]), reference_denoised(transformer, x, sigma, text, pooled), plain)  # fmt: skip


@pytest.mark.parametrize("cfg", [1.0, CFG])
def test_sampler_path_matches_the_reference_at_cfg_1_and_above(flux, tmp_path, cfg):
    """ComfyUI's sampler, one Euler step from σ = 0.6 to 0 (the denoised prediction): at cfg 1 only the cond rows
    run, above it cond and uncond rows, every one with the image's tokens (Encode's default)."""
    model, transformer = flux
    path, parts = instantx_file(tmp_path, "ip-adapter.bin", seed=11)
    adapter = load_adapter(path)
    generator, x, text, pooled = inputs(12)
    image = torch.randn(1, SIGLIP_WIDTH, generator=generator)
    patched = apply_image_prompt(model, adapter, manage(adapter).weights_patcher, make_embeds(image, image, clip_output=POOLED),
                                 weight=1.0, start_at=0.0, end_at=1.0)  # fmt: skip
    sampling = OneStepSampling(model, x, text, pooled, generator, cfg=cfg)
    ours, plain = sampling.denoised(patched), sampling.denoised(model)
    tokens = reference_tokens(parts, image)
    set_reference(transformer, [(parts, 1.0, rows([tokens, tokens]))])
    both = reference_denoised(transformer, sampling.model_input(), torch.tensor(0.6), text, pooled)  # rows [cond, uncond]
    check(f"InstantX Flux sampler cfg {cfg:g}", ours, sampling.guided(both), plain)


def test_a_step_range_that_excludes_the_step_is_the_plain_model(flux, tmp_path):
    model, _ = flux
    path, _ = instantx_file(tmp_path, "ip-adapter.bin", seed=13)
    adapter = load_adapter(path)
    generator, x, text, pooled = inputs(14)
    image = torch.randn(1, SIGLIP_WIDTH, generator=generator)
    embeds = make_embeds(image, image, clip_output=POOLED)
    sigma = torch.tensor(0.6)
    plain = comfy_denoised(model, x, sigma, text, pooled, [1, 0])
    for start_at, end_at, acts in ((0.0, 1.0, True), (0.8, 1.0, False), (0.0, 0.1, False)):
        patched = apply_image_prompt(model, adapter, manage(adapter).weights_patcher, embeds, weight=1.0, start_at=start_at, end_at=end_at)
        ours = comfy_denoised(patched, x, sigma, text, pooled, [1, 0])
        assert torch.equal(ours, plain) != acts, (start_at, end_at)


def test_block_weights_number_the_double_then_the_single_blocks(flux, tmp_path):
    """block_weights "1:1.0, 2:0.5" = the reference with file block 1 (double block 1) at λ and block 2 (single block
    0) at λ/2, the others 0; blocks weighted 0 get no patch."""
    model, transformer = flux
    path, parts = instantx_file(tmp_path, "ip-adapter.bin", seed=15)
    adapter = load_adapter(path)
    generator, x, text, pooled = inputs(16)
    image = torch.randn(1, SIGLIP_WIDTH, generator=generator)
    sigma = torch.tensor(0.7)
    patched = apply_image_prompt(model, adapter, manage(adapter).weights_patcher, make_embeds(image, image, clip_output=POOLED),
                                 weight=0.8, start_at=0.0, end_at=1.0, block_weights="1:1.0, 2:0.5")  # fmt: skip
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert sorted(dit) == [("double_block", 1), ("single_block", 0)]
    tokens = reference_tokens(parts, image)
    set_reference(transformer, [(parts, 0.8, rows([tokens, tokens]))], scales=[0.0, 1.0, 0.5, 0.0])
    check("InstantX Flux block_weights 1:1, 2:0.5", comfy_denoised(patched, x, sigma, text, pooled, [1, 0]),
          reference_denoised(transformer, x, sigma, text, pooled), comfy_denoised(model, x, sigma, text, pooled, [1, 0]))  # fmt: skip


def test_other_packs_single_block_patch_keeps_working(flux, tmp_path):
    """Another pack's `dit` patch on the single blocks runs, with our image-prompt block as its original block."""
    model, _ = flux
    path, _ = instantx_file(tmp_path, "ip-adapter.bin", seed=17)
    adapter = load_adapter(path)
    generator, x, text, pooled = inputs(18)
    image = torch.randn(1, SIGLIP_WIDTH, generator=generator)
    embeds = make_embeds(image, image, clip_output=POOLED)
    calls = []
    theirs = model.clone()
    for index in range(CONFIG["depth_single_blocks"]):
        theirs.set_model_patch_replace(halving_block_patch(calls), "dit", "single_block", index)
    sigma = torch.tensor(0.5)
    foreign_only = comfy_denoised(theirs, x, sigma, text, pooled, [1, 0])
    at_zero = apply_image_prompt(theirs, adapter, manage(adapter).weights_patcher, embeds, weight=0.0, start_at=0.0, end_at=1.0)
    assert torch.equal(comfy_denoised(at_zero, x, sigma, text, pooled, [1, 0]), foreign_only)
    calls.clear()
    both = apply_image_prompt(theirs, adapter, manage(adapter).weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    with_ip = comfy_denoised(both, x, sigma, text, pooled, [1, 0])
    assert len(calls) == CONFIG["depth_single_blocks"], "the other pack's patch must run once per single block"
    assert (with_ip - foreign_only).abs().max() > 1e-3


def test_the_instantx_file_is_detected_beside_xlabs(comfy_host, tmp_path):
    """The official container (a pickle of nested dicts, read as weights only) and flat safetensors keys."""
    from safetensors.torch import save_file

    path, parts = instantx_file(tmp_path, "ip-adapter.bin", seed=19)
    flat = {f"{part}.{key}": tensor for part, tensors in parts.items() for key, tensor in tensors.items()}
    save_file(flat, str(tmp_path / "ip-adapter.safetensors"))
    for file in (path, str(tmp_path / "ip-adapter.safetensors")):
        spec = load_adapter(file).spec
        assert (spec.variant, spec.base, spec.num_tokens, spec.embedding_dim, spec.context_dim, spec.hidden_size, spec.layers,
                spec.image_encoder, spec.clip_output) == ("instantx-flux.1-dev-ip-adapter", "Flux", 4, SIGLIP_WIDTH, 4096,
                                                          HIDDEN, LAYERS, "SigLIP", POOLED)  # fmt: skip


def test_a_damaged_instantx_file_is_refused(comfy_host, tmp_path):
    parts = instantx_adapter_parts(hidden_size=HIDDEN, layers=LAYERS, seed=20)
    del parts["ip_adapter"]["2.to_v_ip.weight"]
    torch.save(parts, str(tmp_path / "cut.bin"))
    with pytest.raises(IPAdapterError, match="cut.bin' looks like the InstantX FLUX.1-dev IP-Adapter but its blocks have K'/V' of different shapes"):
        load_adapter(str(tmp_path / "cut.bin"))


def test_the_instantx_adapter_is_refused_on_other_families_and_sizes(flux, tmp_path):
    path, _ = instantx_file(tmp_path, "ip-adapter.bin", seed=21)
    adapter = load_adapter(path)
    embeds = make_embeds(torch.randn(1, SIGLIP_WIDTH), torch.randn(1, SIGLIP_WIDTH), clip_output=POOLED)
    with pytest.raises(IPAdapterError, match="'ip-adapter.bin' is a Flux IP-Adapter but it was applied to a model that is not Flux"):
        apply_image_prompt(tiny_comfy_model("SD1.5", seed=0), adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    deeper = tiny_flux_model(tiny_flux_config(double_blocks=3, single_blocks=2), seed=2)
    with pytest.raises(IPAdapterError, match="K'/V' for 4 blocks of width 256 .*this Flux model has 3 double and 2 single"):
        apply_image_prompt(deeper, adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    clip_embeds = make_embeds(torch.randn(1, 768), torch.zeros(1, 768), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match="reads the CLIP SigLIP pooled output, but these embeds hold image embeds"):
        apply_image_prompt(flux[0], adapter, None, clip_embeds, weight=1.0, start_at=0.0, end_at=1.0)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"weight_type": "style transfer"}, "weight_type 'style transfer'"),
        ({"embeds_scaling": "K+V"}, "embeds_scaling 'K\\+V'"),
        ({"attn_mask": torch.ones(1, 64, 64)}, "attn_mask"),
        ({"block_weights": "4:1.0"}, "no block 4 .*give block indexes 0–3"),
    ],
)
def test_unet_only_options_are_refused_naming_them(flux, tmp_path, options, named):
    path, _ = instantx_file(tmp_path, "ip-adapter.bin", seed=22)
    adapter = load_adapter(path)
    embeds = make_embeds(torch.randn(1, SIGLIP_WIDTH), torch.randn(1, SIGLIP_WIDTH), clip_output=POOLED)
    with pytest.raises(IPAdapterError, match=named):
        apply_image_prompt(flux[0], adapter, None, embeds, weight=1.0, start_at=0.0, end_at=1.0, **options)


def test_in_bf16_the_patch_runs_and_changes_the_output_as_in_fp32(flux, tmp_path):
    """The same tiny Flux stored and run in bf16 (as ComfyUI runs FLUX.1 on most GPUs): λ = 0 is the plain bf16 model
    exactly, and the change λ = 1 makes points the way of the fp32 change (cosine > 0.8: random tiny weights in bf16
    move even the plain output by about 20% of its size, so no tighter figure is meaningful here)."""
    import comfy.model_patcher
    from tiny_flux import flux_model_config
    from tiny_models import fill_random_

    model_config = flux_model_config(CONFIG)
    model_config.set_inference_dtype(torch.bfloat16, None)
    half = model_config.get_model({}, device=torch.device("cpu"))
    fill_random_(half.diffusion_model, seed=1)  # the fixture's weights, rounded to bf16
    half.diffusion_model.to(torch.bfloat16)
    cpu = torch.device("cpu")
    half = comfy.model_patcher.ModelPatcher(half, load_device=cpu, offload_device=cpu)
    path, _ = instantx_file(tmp_path, "ip-adapter.bin", seed=23)
    adapter = load_adapter(path)
    generator, x, text, pooled = inputs(24)
    image = torch.randn(1, SIGLIP_WIDTH, generator=generator)
    embeds = make_embeds(image, image, clip_output=POOLED)
    sigma = torch.tensor(0.6)
    changes = []
    for model in (flux[0], half):
        plain = comfy_denoised(model, x, sigma, text, pooled, [1, 0]).float()
        at_zero = apply_image_prompt(model, adapter, manage(adapter).weights_patcher, embeds, weight=0.0, start_at=0.0, end_at=1.0)
        assert torch.equal(comfy_denoised(at_zero, x, sigma, text, pooled, [1, 0]).float(), plain)
        patched = apply_image_prompt(model, adapter, manage(adapter).weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
        changes.append(comfy_denoised(patched, x, sigma, text, pooled, [1, 0]).float() - plain)
    fp32_change, bf16_change = changes
    assert torch.isfinite(bf16_change).all() and bf16_change.abs().max() > 0.1 * fp32_change.abs().max()
    assert F.cosine_similarity(bf16_change.flatten(), fp32_change.flatten(), dim=0) > 0.8


@pytest.mark.parametrize(
    "variant",
    [{}, {"flipped_img_txt": True}, {"modulation": False}, {"mlp_silu_act": True}],
    ids=["FLUX.1", "flipped_img_txt", "modulation in vec", "SiLU-gated MLP"],
)
def test_blocks_computed_from_their_modules_are_comfyuis_own_blocks(comfy_host, variant):
    """With no term the blocks the patch computes (blocks.py) give exactly ComfyUI's own double and single blocks,
    in the variants newer Flux models use, read from the block itself."""
    import comfy.ldm.flux.layers as layers
    import comfy.ops
    from tiny_models import fill_random_

    from decoupled_ipadapter.ipadapter_core.flux.blocks import double_block_with_image_prompt, single_block_with_image_prompt
    from decoupled_ipadapter.ipadapter_core.term import DitBlock

    ops = comfy.ops.disable_weight_init
    width, heads = 256, 2
    double = layers.DoubleStreamBlock(width, heads, 4.0, qkv_bias=True, operations=ops, **variant)
    single_variant = {key: value for key, value in variant.items() if key != "flipped_img_txt"}
    single = layers.SingleStreamBlock(width, heads, 4.0, operations=ops, **single_variant)
    fill_random_(double, seed=25)
    fill_random_(single, seed=26)
    generator = torch.Generator().manual_seed(27)
    img, txt = torch.randn(2, 16, width, generator=generator), torch.randn(2, 8, width, generator=generator)
    pe = torch.randn(1, 1, 24, FLUX_HEAD_DIM // 2, 2, 2, generator=generator)  # any rotation: the same for both
    if variant.get("modulation", True):
        vec = torch.randn(2, width, generator=generator)
        single_vec = vec
    else:
        def modulation():
            return layers.ModulationOut(*(torch.randn(2, 1, width, generator=generator) for _ in range(3)))

        vec = ((modulation(), modulation()), (modulation(), modulation()))
        single_vec = modulation()
    options = {"cond_or_uncond": [0, 1]}
    with torch.no_grad():
        theirs = double(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe, attn_mask=None, transformer_options=options)
        ours, _ = double_block_with_image_prompt(double, {"img": img, "txt": txt, "vec": vec, "pe": pe, "transformer_options": options}, [], DitBlock(0))
        assert torch.equal(ours["img"], theirs[0]) and torch.equal(ours["txt"], theirs[1])
        x = torch.cat([txt, img], dim=1)
        theirs = single(x.clone(), vec=single_vec, pe=pe, attn_mask=None, transformer_options=options)
        ours = single_block_with_image_prompt(single, {"img": x, "vec": single_vec, "pe": pe, "transformer_options": options}, [], DitBlock(1))
        assert torch.equal(ours["img"], theirs)
