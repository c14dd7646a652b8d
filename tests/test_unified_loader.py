"""IPAdapter Unified Loader, called as ComfyUI calls V3 nodes, in-process on CPU, on model folders of its own.

Adapters are small random files in the official format; the image encoder is loaded by ComfyUI's own
`comfy.clip_vision.load`, replaced here by a recorder that returns a tiny encoder of the right widths (ComfyUI
recognises only full-depth encoders; the real loading runs in the unified-loader workflow on the stand-ins).
"""

import os

import pytest
import torch
from official_shapes import write_state_dict
from safetensors.torch import save_file
from tiny_clip_vision import tiny_clip_vision
from tiny_models import SD15_TEXT_WIDTH, adapter_state_dict

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

pytestmark = pytest.mark.host

HUB = "https://huggingface.co/h94/IP-Adapter/resolve/main/"
SMALL_SD15_WIDTHS = (32,) * 16  # a structurally valid SD1.5 adapter, small enough to write in milliseconds


def small_sd15_adapter(embedding_dim: int = 1024, seed: int = 0) -> dict[str, torch.Tensor]:
    return adapter_state_dict("linear", hidden_sizes=SMALL_SD15_WIDTHS, text_width=SD15_TEXT_WIDTH, seed=seed,
                              embedding_dim=embedding_dim, dtype=torch.float16)  # fmt: skip


@pytest.fixture
def model_folders(comfy_host, tmp_path, monkeypatch):
    """Empty `ipadapter` and `clip_vision` model folders that replace the host's for one test."""
    import folder_paths

    roots = {}
    for folder in ("ipadapter", "clip_vision"):
        roots[folder] = tmp_path / folder
        roots[folder].mkdir()
        extensions = folder_paths.folder_names_and_paths[folder][1]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, folder, ([str(roots[folder])], extensions))
        monkeypatch.delitem(folder_paths.filename_list_cache, folder, raising=False)
    yield roots
    for folder in roots:
        folder_paths.filename_list_cache.pop(folder, None)


@pytest.fixture
def clip_vision_loads(comfy_host, tmp_path, monkeypatch):
    """Replaces ComfyUI's CLIP vision loading: `loads["encoder"]` says which tiny encoder the next load returns
    ("ViT-H", "ViT-bigG", or None for a file ComfyUI does not recognise); `loads["paths"]` records what was loaded."""
    import comfy.clip_vision

    encoders = {name: tiny_clip_vision(name, tmp_path, seed=index) for index, name in enumerate(("ViT-H", "ViT-bigG"))}
    loads = {"encoder": "ViT-H", "paths": []}

    def load(path):
        loads["paths"].append(path)
        return None if loads["encoder"] is None else encoders[loads["encoder"]]

    monkeypatch.setattr(comfy.clip_vision, "load", load)
    return loads


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from decoupled_ipadapter.nodes import loader, unified_loader

    return {"unified": unified_loader.UnifiedLoader, "load": loader.LoadIPAdapter}


def run(node, **inputs):
    with torch.inference_mode():
        return node.execute(**inputs).result


def put(root, relative: str, tensors: dict | None = None):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if relative.endswith(".bin"):
        write_state_dict(tensors, path)
    else:
        save_file(tensors if tensors is not None else {"placeholder": torch.zeros(1)}, str(path))
    return path


def test_official_names_load_the_adapter_and_its_encoder(nodes, model_folders, clip_vision_loads):
    put(model_folders["ipadapter"], "ip-adapter_sd15.safetensors", small_sd15_adapter())
    encoder = put(model_folders["clip_vision"], "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    assert nodes["unified"].validate_inputs(preset="SD1.5 standard") is True
    managed, clip_vision = run(nodes["unified"], preset="SD1.5 standard")
    assert managed.adapter.spec.variant == "ip-adapter_sd15"
    assert run(nodes["load"], ipadapter_name="ip-adapter_sd15.safetensors")[0] is managed, "Load IPAdapter's cache"
    assert clip_vision_loads["paths"] == [str(encoder)]
    assert clip_vision.model.visual_projection.weight.shape == (1024, 1280)


def test_renamed_files_in_subfolders_are_found(nodes, model_folders, clip_vision_loads):
    """The .bin container (nested dict, read as weights only), odd spelling, Manager's old SDXL/model layout."""
    put(model_folders["ipadapter"], "sd15/IP_Adapter_SD15_ViT-G.bin", small_sd15_adapter(embedding_dim=1280))
    put(model_folders["clip_vision"], "CLIP-ViT-H-14.safetensors")
    encoder = put(model_folders["clip_vision"], "SDXL/model.safetensors")
    clip_vision_loads["encoder"] = "ViT-bigG"
    managed, _ = run(nodes["unified"], preset="SD1.5 ViT-G")
    assert managed.adapter.spec.variant == "ip-adapter_sd15_vit-G" and managed.adapter.source == "IP_Adapter_SD15_ViT-G.bin"
    assert clip_vision_loads["paths"] == [str(encoder)]


def test_missing_files_are_named_at_queue_time_and_when_run(nodes, model_folders, clip_vision_loads):
    message = nodes["unified"].validate_inputs(preset="SDXL plus-face ViT-H")
    assert isinstance(message, str)
    for expected in (
        f"- ip-adapter-plus-face_sdxl_vit-h.safetensors: put it in the ipadapter model folder ({model_folders['ipadapter']})",
        f"Download {HUB}sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors.",
        f"- CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors: put it in the clip_vision model folder ({model_folders['clip_vision']})",
        f"Download {HUB}models/image_encoder/model.safetensors, then rename it to CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors.",
    ):
        assert expected in message, (expected, message)
    with pytest.raises(IPAdapterError) as raised:
        run(nodes["unified"], preset="SDXL plus-face ViT-H")
    assert str(raised.value) == f"IPAdapter Unified Loader: {message}"
    assert clip_vision_loads["paths"] == [], "nothing is loaded when a file is missing"

    put(model_folders["clip_vision"], "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    message = nodes["unified"].validate_inputs(preset="SDXL plus-face ViT-H")
    assert "ip-adapter-plus-face_sdxl_vit-h.safetensors" in message and "CLIP-ViT-H" not in message


def test_an_unknown_or_linked_preset_at_queue_time(nodes, model_folders):
    message = nodes["unified"].validate_inputs(preset="SD1.5 turbo")
    assert "Unknown preset 'SD1.5 turbo'" in message and "SDXL plus-face ViT-H" in message
    assert nodes["unified"].validate_inputs(preset=None) is True, "a linked preset is checked when it runs"


def test_a_file_named_as_the_preset_but_of_another_kind_is_refused(nodes, model_folders, clip_vision_loads):
    put(model_folders["ipadapter"], "ip-adapter_sd15.safetensors", small_sd15_adapter(embedding_dim=1280))  # a ViT-G file
    put(model_folders["clip_vision"], "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    with pytest.raises(IPAdapterError) as raised:
        run(nodes["unified"], preset="SD1.5 standard")
    message = str(raised.value)
    assert "'ip-adapter_sd15.safetensors' was picked for preset 'SD1.5 standard'" in message
    assert "it is ip-adapter_sd15_vit-G, not ip-adapter_sd15" in message and f"{HUB}models/ip-adapter_sd15.safetensors" in message


def test_an_encoder_file_of_the_wrong_kind_is_refused(nodes, model_folders, clip_vision_loads):
    put(model_folders["ipadapter"], "ip-adapter_sd15.safetensors", small_sd15_adapter())
    put(model_folders["clip_vision"], "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    clip_vision_loads["encoder"] = "ViT-bigG"  # the file named ViT-H holds a bigG encoder
    with pytest.raises(IPAdapterError) as raised:
        run(nodes["unified"], preset="SD1.5 standard")
    message = str(raised.value)
    assert "'CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors' was picked as the image encoder of preset 'SD1.5 standard'" in message
    assert "ViT-bigG" in message and f"{HUB}models/image_encoder/model.safetensors" in message


def test_a_file_comfyui_cannot_read_as_clip_vision_is_named(nodes, model_folders):
    """ComfyUI's own loader (not replaced here) gives None for a file without a known CLIP vision layout."""
    put(model_folders["ipadapter"], "ip-adapter_sd15.safetensors", small_sd15_adapter())
    put(model_folders["clip_vision"], "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", {"not.a.clip": torch.zeros(2)})
    with pytest.raises(IPAdapterError) as raised:
        run(nodes["unified"], preset="SD1.5 standard")
    assert "'CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors' is not a CLIP vision model ComfyUI can read" in str(raised.value)
    assert os.path.isfile(model_folders["clip_vision"] / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")


def test_unified_loader_faceid_finds_its_files_or_names_the_missing_ones(model_folders, clip_vision_loads, tmp_path, monkeypatch):
    pytest.importorskip("insightface")
    import folder_paths
    from tiny_insightface import build_insightface_pack
    from tiny_models import faceid_adapter_state_dict

    from decoupled_ipadapter.nodes.unified_loader import UnifiedLoaderFaceID

    insightface = tmp_path / "insightface"
    extensions = folder_paths.folder_names_and_paths["insightface"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(insightface)], extensions))
    message = UnifiedLoaderFaceID.validate_inputs(preset="FaceID Plus V2", base="SD1.5", provider="CPU")
    assert "- ip-adapter-faceid-plusv2_sd15.bin: put it in the ipadapter model folder" in message
    assert "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/ip-adapter-faceid-plusv2_sd15.bin" in message
    assert "- CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in message
    assert "the buffalo_l model pack: download https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip" in message
    assert "There is no official FaceID Plus file for SDXL" in UnifiedLoaderFaceID.validate_inputs(preset="FaceID Plus", base="SDXL", provider="CPU")

    build_insightface_pack(insightface)
    for name, kind in (("ip-adapter-faceid-plusv2_sd15.bin", "plus"), ("ip-adapter-faceid_sd15.bin", "faceid")):
        parts = faceid_adapter_state_dict(kind, hidden_sizes=(64,) * 16, text_width=768, seed=3, lora_rank=2)
        torch.save(parts, str(model_folders["ipadapter"] / name))  # the official nested .bin layout
    message = UnifiedLoaderFaceID.validate_inputs(preset="FaceID Plus V2", base="SD1.5", provider="CPU")
    assert "CLIP-ViT-H-14" in message and "ip-adapter-faceid-plusv2_sd15.bin" not in message and "buffalo_l" not in message
    assert UnifiedLoaderFaceID.validate_inputs(preset="FaceID", base="SD1.5", provider="CPU") is True
    put(model_folders["clip_vision"], "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    assert UnifiedLoaderFaceID.validate_inputs(preset="FaceID Plus V2", base="SD1.5", provider="CPU") is True
    managed, clip_vision, analyser = run(UnifiedLoaderFaceID, preset="FaceID Plus V2", base="SD1.5", provider="CPU")
    assert managed.adapter.spec.variant == "ip-adapter-faceid-plusv2_sd15" and clip_vision is not None and analyser.name == "buffalo_l"
    managed, clip_vision, _ = run(UnifiedLoaderFaceID, preset="FaceID", base="SD1.5", provider="CPU")
    assert managed.adapter.spec.variant == "ip-adapter-faceid_sd15" and clip_vision is None


def test_the_community_composition_preset_loads_ostris_file_and_names_its_download(nodes, model_folders, clip_vision_loads):
    message = nodes["unified"].validate_inputs(preset="SD1.5 composition (community)")
    assert isinstance(message, str) and (
        "- ip_plus_composition_sd15.safetensors: put it in the ipadapter model folder "
        f"({model_folders['ipadapter']}). Download "
        "https://huggingface.co/ostris/ip-composition-adapter/resolve/main/ip_plus_composition_sd15.safetensors."
    ) in message, message
    plus = adapter_state_dict("resampler", hidden_sizes=SMALL_SD15_WIDTHS, text_width=SD15_TEXT_WIDTH, seed=3,
                              dtype=torch.float16)  # fmt: skip
    put(model_folders["ipadapter"], "ostris/ip_plus_composition_sd15.safetensors", plus)
    put(model_folders["ipadapter"], "ip-adapter-plus_sd15.safetensors", plus)  # h94's plus file: not the preset's
    put(model_folders["clip_vision"], "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    managed, _ = run(nodes["unified"], preset="SD1.5 composition (community)")
    assert managed.adapter.spec.variant == "ip_plus_composition_sd15"
    assert (managed.adapter.spec.projection, managed.adapter.spec.num_tokens) == ("resampler", 16)
    assert run(nodes["unified"], preset="SD1.5 plus")[0].adapter.spec.variant == "ip-adapter-plus_sd15"
