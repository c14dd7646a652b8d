"""IP-Adapter FaceID: Apply (projection + decoupled attention + the file's
LoRA) exact to diffusers' `load_ip_adapter` with the same `.bin`, which applies the LoRA through peft.

The InsightFace pack is the synthetic one of devkit/tiny_insightface.py (buffalo_l's file names and interfaces,
read by InsightFace's own model zoo); the UNets are the tiny SD1.5 and SDXL layouts of the diffusers parity tests.
Tolerance: fp32, |Δ| <= 2e-5 · max|output|, as there.
"""

import pytest
import torch
from test_parity_diffusers import PARITY_ERRORS, RELATIVE_TOLERANCE, TEXT_WIDTH
from tiny_models import diffusers_twin, faceid_adapter_state_dict, layer_hidden_sizes, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.encoders import FACE_EMBEDDING, PENULTIMATE
from decoupled_ipadapter.ipadapter_core.memory import manage

pytest.importorskip("insightface")
pytest.importorskip("peft")
from test_face_analysis import face_nodes, insightface_root, managed_faceid, run, sd15  # noqa: E402,F401  (fixtures, helpers)


def faceid_file(tmp_path, model, layout, kind, *, name, seed=3, lora=True):
    parts = faceid_adapter_state_dict(kind, hidden_sizes=layer_hidden_sizes(model), text_width=TEXT_WIDTH[layout], seed=seed, lora=lora)
    path = tmp_path / name
    torch.save(parts, str(path))
    return path, parts


def comfy_forward(model, x, t, text):
    """The patched ModelPatcher as a sampler runs it: its weight patches (the LoRA) put on, then the UNet."""
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=[1, 0], sigmas=torch.ones(x.shape[0]))
    model.patch_model()
    try:
        with torch.no_grad():
            return model.model.diffusion_model(x, timesteps=t, context=text, transformer_options=options)
    finally:
        model.unpatch_model()


def diffusers_reference(model, layout, parts):
    """diffusers' UNet with the file loaded as `load_ip_adapter` does: the adapter, then its LoRA through peft."""
    unet = diffusers_twin(model, layout)
    unet._load_ip_adapter_weights([parts], low_cpu_mem_usage=False)
    loras = unet._load_ip_adapter_loras([parts])
    for index, lora in loras.items():
        unet.load_lora_adapter(lora, prefix="unet", adapter_name=f"faceid_{index}")
    return unet, bool(loras)


def diffusers_forward(unet, x, t, text, face_rows, *, scale, lora_strength, has_lora, clip_rows=None, shortcut_scale=None):
    for processor in unet.attn_processors.values():
        if hasattr(processor, "scale"):
            processor.scale = [scale]
    if has_lora:
        unet.set_adapters(["faceid_0"], weights=[lora_strength])
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    if clip_rows is not None:
        projection.clip_embeds = clip_rows  # [2, n, 257, 1280]
        projection.shortcut = shortcut_scale is not None
        projection.shortcut_scale = shortcut_scale if shortcut_scale is not None else 1.0
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [face_rows]}).sample


def inputs(layout, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([500.0, 500.0])
    text = torch.randn(2, 77, TEXT_WIDTH[layout], generator=generator)
    return x, t, text, generator


def check(label, ours, theirs):
    error = (ours - theirs).abs().max().item()
    PARITY_ERRORS.append((label, error))
    assert error <= RELATIVE_TOLERANCE * theirs.abs().max().item(), f"{label}: |Δ| = {error}"


@pytest.mark.parametrize("layout, kind, name, faces", [
    ("SD1.5", "faceid", "ip-adapter-faceid_sd15.bin", 1),
    ("SD1.5", "portrait", "ip-adapter-faceid-portrait_sd15.bin", 2),
    ("SDXL", "faceid", "ip-adapter-faceid_sdxl.bin", 1),
])  # fmt: skip
def test_faceid_matches_diffusers(comfy_host, tmp_path, layout, kind, name, faces):
    model = tiny_comfy_model(layout, seed=1)
    path, parts = faceid_file(tmp_path, model, layout, kind, name=name, lora=kind != "portrait")
    adapter = load_adapter(str(path))
    assert adapter.spec.projection == "faceid" and adapter.spec.num_tokens == (16 if kind == "portrait" else 4)
    assert bool(adapter.lora) == (kind != "portrait")
    weights = manage(adapter).weights_patcher
    reference, has_lora = diffusers_reference(model, layout, parts)
    x, t, text, generator = inputs(layout, 9)
    embeds = make_embeds(torch.nn.functional.normalize(torch.randn(faces, 512, generator=generator), dim=-1), torch.zeros(1, 512), clip_output=FACE_EMBEDDING)
    face_rows = torch.stack([embeds.negative, embeds.positive])  # [2 (uncond, cond), n, 512]
    plain = comfy_forward(model, x, t, text)
    strengths = (1.0, 0.5) if has_lora else (1.0,)
    for lora_strength in strengths:
        for scale in (0.0, 0.6, 1.0):
            patched = apply_image_prompt(
                model, adapter, weights, embeds, weight=scale, start_at=0.0, end_at=1.0, lora_strength=lora_strength
            )
            ours = comfy_forward(patched, x, t, text)
            theirs = diffusers_forward(reference, x, t, text, face_rows, scale=scale, lora_strength=lora_strength, has_lora=has_lora)
            check(f"{layout} {name} λ={scale} lora={lora_strength}", ours, theirs)
            assert (ours - plain).abs().max() > 1e-3 or (scale == 0 and not has_lora)
    assert torch.equal(comfy_forward(model, x, t, text), plain), "the LoRA must leave the input model unchanged"
    off = apply_image_prompt(model, adapter, weights, embeds, weight=0.0, start_at=0.0, end_at=1.0, lora_strength=0.0)
    assert torch.equal(comfy_forward(off, x, t, text), plain), "λ = 0 with lora_strength 0 is the plain model"


@pytest.mark.parametrize("name, shortcut_scales", [
    ("ip-adapter-faceid-plusv2_sd15.bin", (1.0, 0.5)),
    ("ip-adapter-faceid-plus_sd15.bin", (None,)),
])  # fmt: skip
def test_faceid_plus_matches_diffusers(comfy_host, tmp_path, name, shortcut_scales):
    model = tiny_comfy_model("SD1.5", seed=2)
    path, parts = faceid_file(tmp_path, model, "SD1.5", "plus", name=name, seed=5)
    adapter = load_adapter(str(path))
    assert adapter.spec.projection == "faceid_plus" and adapter.spec.shortcut == ("plusv2" in name)
    weights = manage(adapter).weights_patcher
    reference, has_lora = diffusers_reference(model, "SD1.5", parts)
    x, t, text, generator = inputs("SD1.5", 10)
    faces = torch.nn.functional.normalize(torch.randn(1, 512, generator=generator), dim=-1)
    hidden, uncond_hidden = torch.randn(1, 257, 1280, generator=generator), torch.randn(1, 257, 1280, generator=generator)
    embeds = make_embeds(hidden, uncond_hidden, clip_output=PENULTIMATE, face_positive=faces, face_negative=torch.zeros(1, 512))
    face_rows = torch.stack([embeds.face_negative, embeds.face_positive])  # [2, 1, 512]
    clip_rows = torch.stack([embeds.negative, embeds.positive])  # [2, 1, 257, 1280]
    outputs = []
    for s in shortcut_scales:
        for scale in (0.6, 1.0):
            patched = apply_image_prompt(
                model, adapter, weights, embeds, weight=scale, start_at=0.0, end_at=1.0, faceid_v2_weight=0.3 if s is None else s
            )
            ours = comfy_forward(patched, x, t, text)
            theirs = diffusers_forward(
                reference, x, t, text, face_rows, scale=scale, lora_strength=1.0, has_lora=has_lora, clip_rows=clip_rows, shortcut_scale=s
            )
            check(f"SD1.5 {name} λ={scale} s={s}", ours, theirs)
            outputs.append(ours)
    if len(shortcut_scales) > 1:
        assert (outputs[0] - outputs[2]).abs().max() > 1e-4, "PlusV2: s changes the output"


def test_two_apply_nodes_with_the_same_file_put_its_lora_on_once(face_nodes, sd15, tmp_path):
    faceid = managed_faceid(tmp_path, sd15, "faceid", "ip-adapter-faceid_sd15.bin")
    other = managed_faceid(tmp_path, sd15, "faceid", "ip-adapter-faceid_sd15 (copy).bin", seed=8)
    embeds = make_embeds(torch.randn(1, 512), torch.zeros(1, 512), clip_output=FACE_EMBEDDING)
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    common = dict(ipadapter=faceid, embeds=embeds, weight=1.0, start_at=0.0, end_at=1.0)
    (once,) = run(face_nodes["apply"], model=sd15, **common)
    (twice,) = run(face_nodes["apply"], model=once, **common)
    assert len(once.patches[key]) == 1 and len(twice.patches[key]) == 1, "one file's LoRA acts once"
    (both,) = run(face_nodes["apply"], model=twice, **{**common, "ipadapter": other})
    assert len(both.patches[key]) == 2, "another FaceID file brings its own LoRA"
    (none,) = run(face_nodes["apply"], model=sd15, **common, lora_strength=0.0)
    assert key not in none.patches and key not in sd15.patches


def test_face_embeds_save_and_load(tmp_path):
    from safetensors.torch import save_file

    from decoupled_ipadapter.ipadapter_core.embeds_file import embeds_file_content, read_embeds_file

    for embeds in (
        make_embeds(torch.randn(2, 512), torch.zeros(1, 512), clip_output=FACE_EMBEDDING, adapter_variant="ip-adapter-faceid_sd15"),
        make_embeds(torch.randn(1, 257, 1280), torch.randn(1, 257, 1280), clip_output=PENULTIMATE, face_positive=torch.randn(1, 512), face_negative=torch.zeros(1, 512)),
    ):
        tensors, metadata = embeds_file_content(embeds)
        path = tmp_path / "face.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        loaded = read_embeds_file(str(path))
        for name in ("positive", "negative", "face_positive", "face_negative"):
            original, read = getattr(embeds, name), getattr(loaded, name)
            assert (original is None and read is None) or torch.equal(original, read)
        assert loaded.clip_output == embeds.clip_output


OFFICIAL_FACEID = {  # file -> (base, kind, variant, tokens, reads the raw embedding, shortcut, has a LoRA)
    "ip-adapter-faceid_sd15.bin": ("SD1.5", "faceid", "ip-adapter-faceid_sd15", 4, False, False, True),
    "ip-adapter-faceid-plus_sd15.bin": ("SD1.5", "plus", "ip-adapter-faceid-plus_sd15", 4, False, False, True),
    "ip-adapter-faceid-plusv2_sd15.bin": ("SD1.5", "plus", "ip-adapter-faceid-plusv2_sd15", 4, False, True, True),
    "ip-adapter-faceid-portrait_sd15.bin": ("SD1.5", "portrait", "ip-adapter-faceid-portrait_sd15", 16, False, False, False),
    "ip-adapter-faceid-portrait-v11_sd15.bin": ("SD1.5", "portrait", "ip-adapter-faceid-portrait-v11_sd15", 16, False, False, False),
    "ip-adapter-faceid_sdxl.bin": ("SDXL", "faceid", "ip-adapter-faceid_sdxl", 4, False, False, True),
    "ip-adapter-faceid-plusv2_sdxl.bin": ("SDXL", "plus", "ip-adapter-faceid-plusv2_sdxl", 4, False, True, True),
    "ip-adapter-faceid-portrait_sdxl.bin": ("SDXL", "portrait", "ip-adapter-faceid-portrait_sdxl", 16, False, False, False),
    "ip-adapter-faceid-portrait_sdxl_unnorm.bin": ("SDXL", "portrait", "ip-adapter-faceid-portrait_sdxl_unnorm", 16, True, False, False),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_FACEID))
def test_official_faceid_files_are_detected_from_their_tensors_and_names(tmp_path, name):
    """Every official FaceID file at its real shapes (the rank-128 LoRA on all 32 / 140 attention layers; stored
    as zero-stride views, so the file is small): what Load IPAdapter detects."""
    from tiny_models import SD15_HIDDEN_SIZES, SDXL_HIDDEN_SIZES

    from decoupled_ipadapter.models.adapter import IPAdapterModel
    from decoupled_ipadapter.models.faceid_projection import FaceIDPlusProjection, FaceIDProjection

    base, kind, variant, tokens, raw, shortcut, has_lora = OFFICIAL_FACEID[name]
    hidden, text = (SD15_HIDDEN_SIZES, 768) if base == "SD1.5" else (SDXL_HIDDEN_SIZES, 2048)
    with torch.device("meta"):
        if kind == "plus":
            perceiver = dict(dim=text, depth=4, dim_head=64, heads=text // 64, embedding_dim=1280, output_dim=text, ff_mult=4)
            projection = FaceIDPlusProjection(cross_attention_dim=text, num_tokens=4, perceiver=perceiver, shortcut=False)
        else:
            projection = FaceIDProjection(cross_attention_dim=text, num_tokens=tokens)
        model = IPAdapterModel(image_proj=projection, cross_attention_dim=text, hidden_sizes={2 * i + 1: h for i, h in enumerate(hidden)})
    one = torch.zeros(1, dtype=torch.float16)
    parts = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in model.state_dict().items():
        part, _, rest = key.partition(".")
        parts[part][rest] = one.expand(tensor.shape)
    if has_lora:
        for index, width in enumerate(hidden):
            for number, context in ((2 * index, width), (2 * index + 1, text)):
                for projection_name, width_in in (("q", width), ("k", context), ("v", context), ("out", width)):
                    parts["ip_adapter"][f"{number}.to_{projection_name}_lora.down.weight"] = one.expand(128, width_in)
                    parts["ip_adapter"][f"{number}.to_{projection_name}_lora.up.weight"] = one.expand(width, 128)
    path = tmp_path / name
    torch.save(parts, str(path))
    adapter = load_adapter(str(path))
    spec = adapter.spec
    assert (spec.variant, spec.base, spec.num_tokens, spec.face_embedding, spec.shortcut) == (
        variant, base, tokens, "raw" if raw else "normed", shortcut
    )
    assert spec.projection == ("faceid_plus" if kind == "plus" else "faceid")
    assert len(adapter.lora) == (2 * 4 * 2 * len(hidden) if has_lora else 0)
