"""The Unified Loader's preset table and its file lookup (ipadapter_core/presets.py), without ComfyUI.

The table must cover every supported official file with the right encoder and the official download (and ostris's
community composition adapters, told from plus files by their names), find files under their official names and the
usual renames, never take one file for another, and say exactly what to do when a file is missing.
"""

import pytest
import torch
from official_shapes import IMAGE_PROJ_SHAPES, VARIANTS

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.unet.format import detect_spec
from decoupled_ipadapter.ipadapter_core.presets import (
    PRESET_NAMES,
    PRESETS,
    VIT_BIGG_FILE,
    VIT_H_FILE,
    check_detected_variant,
    find_model_file,
    preset_files,
    preset_named,
)

HUB = "https://huggingface.co/h94/IP-Adapter/resolve/main/"
# The official files and their downloads, as the IP-Adapter packs' model tables give them (h94/IP-Adapter).
OFFICIAL = {
    "SD1.5 standard": ("models/ip-adapter_sd15.safetensors", "ViT-H"),
    "SD1.5 light": ("models/ip-adapter_sd15_light_v11.bin", "ViT-H"),
    "SD1.5 plus": ("models/ip-adapter-plus_sd15.safetensors", "ViT-H"),
    "SD1.5 plus-face": ("models/ip-adapter-plus-face_sd15.safetensors", "ViT-H"),
    "SD1.5 full-face": ("models/ip-adapter-full-face_sd15.safetensors", "ViT-H"),
    "SD1.5 ViT-G": ("models/ip-adapter_sd15_vit-G.safetensors", "ViT-bigG"),
    "SDXL standard (ViT-bigG)": ("sdxl_models/ip-adapter_sdxl.safetensors", "ViT-bigG"),
    "SDXL ViT-H": ("sdxl_models/ip-adapter_sdxl_vit-h.safetensors", "ViT-H"),
    "SDXL plus ViT-H": ("sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors", "ViT-H"),
    "SDXL plus-face ViT-H": ("sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors", "ViT-H"),
}
# ostris/ip-composition-adapter: plus-format files (the plus files' keys and shapes) that read ViT-H's hidden states.
OSTRIS = "https://huggingface.co/ostris/ip-composition-adapter/resolve/main/"
COMMUNITY = {
    "SD1.5 composition (community)": ("ip_plus_composition_sd15.safetensors", "ip-adapter-plus_sd15"),
    "SDXL composition (community)": ("ip_plus_composition_sdxl.safetensors", "ip-adapter-plus_sdxl_vit-h"),
}
ENCODERS = {
    "ViT-H": ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", HUB + "models/image_encoder/model.safetensors"),
    "ViT-bigG": ("CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", HUB + "sdxl_models/image_encoder/model.safetensors"),
}
FOLDERS = {"ipadapter": ["/comfy/models/ipadapter"], "clip_vision": ["/comfy/models/clip_vision", "/shared/clip_vision"]}


def test_the_presets_are_the_official_files_with_their_encoders_and_downloads():
    assert PRESET_NAMES == tuple(OFFICIAL) + tuple(COMMUNITY)
    for name, (hub_path, encoder) in OFFICIAL.items():
        preset = PRESETS[name]
        assert (preset.adapter.folder, preset.adapter.name) == ("ipadapter", hub_path.rsplit("/", 1)[1]), name
        assert preset.adapter.url == HUB + hub_path, name
        assert (preset.encoder.folder, preset.encoder.name, preset.encoder.url) == ("clip_vision", *ENCODERS[encoder])


def test_every_supported_official_variant_has_a_preset_with_the_encoder_it_needs():
    """Cross-check with devkit/official_shapes.py, which says what detection reports for each official file."""
    covered = {variant: preset for preset in PRESETS.values() if preset.name not in COMMUNITY for variant in preset.variants}
    assert set(covered) == set(VARIANTS)
    for variant, preset in covered.items():
        encoder = {VIT_H_FILE: "ViT-H", VIT_BIGG_FILE: "ViT-bigG"}[preset.encoder]
        assert VARIANTS[variant].image_encoder == encoder, (variant, preset.name)
        assert preset.adapter.name.rsplit(".", 1)[0] == preset.variants[0], preset.name


def test_the_community_composition_presets_are_ostris_files_with_the_vit_h_encoder():
    for name, (file, _) in COMMUNITY.items():
        preset = PRESETS[name]
        assert (preset.adapter.folder, preset.adapter.name, preset.adapter.url) == ("ipadapter", file, OSTRIS + file)
        assert preset.encoder == VIT_H_FILE and preset.variants == (file.removesuffix(".safetensors"),)


def meta_parts(plus_variant: str) -> dict[str, dict[str, torch.Tensor]]:
    """A plus file's nested parts as shapes only (meta tensors): what detection reads."""
    variant = VARIANTS[plus_variant]
    image_proj = {key: torch.empty(shape, device="meta") for key, shape in IMAGE_PROJ_SHAPES[plus_variant].items()}
    ip_adapter = {
        f"{2 * index + 1}.to_{kv}_ip.weight": torch.empty(hidden, variant.text_width, device="meta")  # [hidden, text]
        for index, hidden in enumerate(variant.hidden_sizes)
        for kv in "kv"
    }
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


@pytest.mark.parametrize("preset_name", list(COMMUNITY))
def test_a_composition_file_is_told_from_a_plus_file_by_its_name(preset_name):
    file, plus_variant = COMMUNITY[preset_name]
    preset, parts = PRESETS[preset_name], meta_parts(plus_variant)
    spec = detect_spec(parts, f"community/{file}")
    assert (spec.variant, spec.projection, spec.num_tokens) == (preset.variants[0], "resampler", 16)
    assert (spec.image_encoder, spec.clip_output, spec.embedding_dim) == ("ViT-H", "penultimate_hidden_states", 1280)
    check_detected_variant(preset, spec.variant, path=file)
    assert detect_spec(parts, f"{plus_variant}.safetensors").variant == plus_variant, "the same tensors under h94's name"
    with pytest.raises(IPAdapterError) as raised:
        check_detected_variant(preset, plus_variant, path=file)
    assert f"'{file}' was picked for preset '{preset_name}' by its name, but it is {plus_variant}," in str(raised.value)


def test_official_names_are_found_also_in_subfolders():
    listing = {
        "ipadapter": ["sd15/ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors", "other.safetensors"],
        "clip_vision": ["encoders/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_l.safetensors"],
    }
    assert preset_files(PRESETS["SD1.5 standard"], available=listing, folders=FOLDERS) == (
        "sd15/ip-adapter_sd15.safetensors",
        "encoders/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
    )
    assert preset_files(PRESETS["SD1.5 plus"], available=listing, folders=FOLDERS)[0] == "ip-adapter-plus_sd15.safetensors"


@pytest.mark.parametrize(
    "wanted, listing, expected",
    [
        (PRESETS["SD1.5 standard"].adapter, ["IP_Adapter_SD15.bin"], "IP_Adapter_SD15.bin"),
        (PRESETS["SD1.5 plus-face"].adapter, ["ip_adapter_plus_face_sd15.safetensors"], "ip_adapter_plus_face_sd15.safetensors"),
        (PRESETS["SDXL plus ViT-H"].adapter, ["xl/IP-Adapter-Plus_SDXL_ViT-H.safetensors"], "xl/IP-Adapter-Plus_SDXL_ViT-H.safetensors"),
        (PRESETS["SD1.5 light"].adapter, ["ip-adapter_sd15_light.safetensors"], "ip-adapter_sd15_light.safetensors"),
        (PRESETS["SDXL composition (community)"].adapter, ["ostris/IP-Plus-Composition-SDXL.safetensors"],
         "ostris/IP-Plus-Composition-SDXL.safetensors"),
        (VIT_H_FILE, ["clip-vit-h-14-laion2b-s32b-b79k.safetensors"], "clip-vit-h-14-laion2b-s32b-b79k.safetensors"),
        (VIT_H_FILE, ["CLIP-ViT-H-14.safetensors"], "CLIP-ViT-H-14.safetensors"),
        (VIT_H_FILE, ["SD1.5/model.safetensors"], "SD1.5/model.safetensors"),
        (VIT_H_FILE, ["IP-Adapter/models/image_encoder/model.safetensors"], "IP-Adapter/models/image_encoder/model.safetensors"),
        (VIT_BIGG_FILE, ["CLIP-ViT-bigG-14.safetensors"], "CLIP-ViT-bigG-14.safetensors"),
        (VIT_BIGG_FILE, ["SDXL/model.safetensors"], "SDXL/model.safetensors"),
        (VIT_BIGG_FILE, ["IP-Adapter/sdxl_models/image_encoder/model.safetensors"], "IP-Adapter/sdxl_models/image_encoder/model.safetensors"),
    ],
)
def test_the_usual_renames_are_found(wanted, listing, expected):
    assert find_model_file(wanted, listing + ["unrelated.safetensors"]) == expected


@pytest.mark.parametrize(
    "wanted, listing",
    [
        (PRESETS["SD1.5 standard"].adapter, ["ip-adapter_sd15_light.safetensors", "ip-adapter_sd15_vit-G.safetensors"]),
        (PRESETS["SD1.5 plus-face"].adapter, ["ip-adapter-plus_sd15.safetensors"]),
        (PRESETS["SD1.5 plus"].adapter, ["ip-adapter-plus-face_sd15.safetensors", "ip-adapter-plus_sdxl_vit-h.safetensors"]),
        (PRESETS["SDXL standard (ViT-bigG)"].adapter, ["ip-adapter_sdxl_vit-h.safetensors"]),
        (PRESETS["SD1.5 composition (community)"].adapter, ["ip-adapter-plus_sd15.safetensors", "ip_plus_composition_sdxl.safetensors"]),
        (PRESETS["SD1.5 plus"].adapter, ["ip_plus_composition_sd15.safetensors"]),
        (VIT_H_FILE, ["model.safetensors", "image_encoder/model.safetensors", "IP-Adapter/sdxl_models/image_encoder/model.safetensors"]),
        (VIT_H_FILE, ["SDXL/model.safetensors", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", "clip_vision_h.safetensors"]),
        (VIT_BIGG_FILE, ["CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "SD1.5/model.safetensors", "clip_vision_g.safetensors"]),
    ],
)
def test_one_file_is_never_taken_for_another(wanted, listing):
    assert find_model_file(wanted, listing) is None


def test_the_preferred_copy_wins():
    light = PRESETS["SD1.5 light"].adapter
    assert find_model_file(light, ["ip-adapter_sd15_light.safetensors", "ip-adapter_sd15_light_v11.bin"]) == (
        "ip-adapter_sd15_light_v11.bin"
    )  # v1.1 before the deprecated v1.0
    standard = PRESETS["SD1.5 standard"].adapter
    assert find_model_file(standard, ["ip-adapter_sd15.bin", "ip-adapter_sd15.safetensors"]) == "ip-adapter_sd15.safetensors"
    assert find_model_file(standard, ["a/ip-adapter_sd15.safetensors", "ip_adapter_sd15.safetensors"]) == (
        "a/ip-adapter_sd15.safetensors"
    )  # the official spelling before a lenient match
    assert find_model_file(VIT_H_FILE, ["SD1.5/model.safetensors", "CLIP-ViT-H-14.safetensors"]) == "CLIP-ViT-H-14.safetensors"


def test_a_missing_file_is_named_with_its_folder_and_download():
    listing = {"ipadapter": [], "clip_vision": ["CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"]}
    with pytest.raises(IPAdapterError) as raised:
        preset_files(PRESETS["SD1.5 plus"], available=listing, folders=FOLDERS)
    message = str(raised.value)
    assert "'SD1.5 plus' needs this file" in message
    assert "ip-adapter-plus_sd15.safetensors: put it in the ipadapter model folder (/comfy/models/ipadapter)" in message
    assert "Download " + HUB + "models/ip-adapter-plus_sd15.safetensors." in message
    assert "CLIP-ViT" not in message, "the encoder is there: only the missing file is named"


def test_every_missing_file_is_named_and_a_renamed_download_says_so():
    with pytest.raises(IPAdapterError) as raised:
        preset_files(PRESETS["SDXL standard (ViT-bigG)"], available={}, folders=FOLDERS)
    lines = str(raised.value).splitlines()
    assert "these files" in lines[0] and len(lines) == 4
    assert lines[1] == (
        "- ip-adapter_sdxl.safetensors: put it in the ipadapter model folder (/comfy/models/ipadapter). "
        f"Download {HUB}sdxl_models/ip-adapter_sdxl.safetensors."
    )
    assert lines[2] == (
        "- CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors: put it in the clip_vision model folder "
        f"(/comfy/models/clip_vision, /shared/clip_vision). Download {HUB}sdxl_models/image_encoder/model.safetensors, "
        "then rename it to CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors."
    )
    assert "queue" in lines[3]


def test_an_unknown_preset_lists_the_presets():
    with pytest.raises(IPAdapterError) as raised:
        preset_named("SD2 standard")
    assert "'SD2 standard'" in str(raised.value) and all(name in str(raised.value) for name in PRESET_NAMES)


def test_a_file_found_by_name_must_be_that_adapter():
    light = PRESETS["SD1.5 light"]
    check_detected_variant(light, "ip-adapter_sd15_light", path="ip-adapter_sd15_light.safetensors")
    check_detected_variant(light, "ip-adapter_sd15_light_v11", path="ip-adapter_sd15_light_v11.bin")
    with pytest.raises(IPAdapterError) as raised:
        check_detected_variant(PRESETS["SD1.5 standard"], "ip-adapter_sd15_vit-G", path="x/ip-adapter_sd15.safetensors")
    message = str(raised.value)
    assert "'x/ip-adapter_sd15.safetensors'" in message and "it is ip-adapter_sd15_vit-G, not ip-adapter_sd15" in message
    assert HUB + "models/ip-adapter_sd15.safetensors" in message
