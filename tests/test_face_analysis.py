"""InsightFace's face analysis for FaceID, exact to InsightFace itself, and the nodes around it: Load InsightFace
(packs, providers, a missing pack, a damaged ONNX file, missing packages) and IPAdapter Encode Face (FaceID,
Portrait, Plus with its CLIP face crop, the face_image crops, a picture without a face, a file that is not FaceID).

The pack is the synthetic one of devkit/tiny_insightface.py: buffalo_l's file names and interfaces, read by
InsightFace's own model zoo. `make test` reruns this module with the oldest insightface and onnxruntime the pack
admits (scripts/oldest-requirements.txt).
"""

import numpy as np
import pytest
import torch
from tiny_insightface import PACK, blank_picture, build_insightface_pack, face_picture
from tiny_models import layer_hidden_sizes, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.encoders import FACE_EMBEDDING
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.memory import manage

pytest.importorskip("insightface")


@pytest.fixture(scope="module")
def insightface_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    build_insightface_pack(root)
    return root


def reference_face(root, picture: torch.Tensor):
    """InsightFace itself, as the reference's model card runs it (all the pack's modules, det_size 640): the BGR
    picture and its first face."""
    from insightface.app import FaceAnalysis

    analysis = FaceAnalysis(name=PACK, root=str(root), providers=["CPUExecutionProvider"])
    analysis.prepare(ctx_id=0, det_size=(640, 640))
    bgr = np.clip(255 * picture[0].numpy(), 0, 255).astype(np.uint8)[:, :, ::-1]
    return bgr, analysis.get(bgr)[0]


def reference_embedding(root, picture: torch.Tensor, *, raw: bool = False) -> np.ndarray:
    _, face = reference_face(root, picture)
    return face.embedding if raw else face.normed_embedding


def reference_crop(root, picture: torch.Tensor, *, size: int) -> torch.Tensor:
    """InsightFace's own `norm_crop` of the first face at `size`, in RGB 0..1: `[size, size, 3]`."""
    from insightface.utils import face_align

    bgr, face = reference_face(root, picture)
    return torch.from_numpy(face_align.norm_crop(bgr, landmark=face.kps, image_size=size)[:, :, ::-1].copy()).float() / 255.0


def test_face_embedding_is_insightface_exactly(insightface_root):
    from decoupled_ipadapter.ipadapter_core.face_analysis import find_faces, load_face_analysis

    analyser = load_face_analysis([str(insightface_root)], PACK, "CPU")
    two_faces = face_picture(seed=5, centres=((0.3, 0.3), (0.7, 0.7)), brightness=(0.8, 1.0), face=0.3)
    pictures = torch.cat([face_picture(seed=1), two_faces])  # [2, 256, 256, 3]
    found = find_faces(analyser, pictures, raw_embedding=False, skip_missing=False)
    for face, index in zip(found, (0, 1)):
        assert np.array_equal(face.embedding, reference_embedding(insightface_root, pictures[index : index + 1]))
    assert not np.allclose(found[0].embedding, found[1].embedding, atol=1e-3), "different faces, different embeddings"
    raw = find_faces(analyser, pictures[:1], raw_embedding=True, skip_missing=False)[0].embedding
    assert np.array_equal(raw, reference_embedding(insightface_root, pictures[:1], raw=True))
    assert abs(np.linalg.norm(raw) - 1.0) > 0.1, "the unnorm file reads the raw embedding"


def test_picture_without_face(insightface_root):
    from decoupled_ipadapter.ipadapter_core.face_analysis import find_faces, load_face_analysis

    analyser = load_face_analysis([str(insightface_root)], PACK, "CPU")
    batch = torch.cat([face_picture(seed=1), blank_picture(), face_picture(seed=2)])
    with pytest.raises(IPAdapterError, match="No face was found in image 1 of the batch"):
        find_faces(analyser, batch, raw_embedding=False, skip_missing=False)
    kept = find_faces(analyser, batch, raw_embedding=False, skip_missing=True)
    assert [face.index for face in kept] == [0, 2]
    with pytest.raises(IPAdapterError, match="No face was found in any of the 2 images"):
        find_faces(analyser, torch.cat([blank_picture(), blank_picture()]), raw_embedding=False, skip_missing=True)


# --- the nodes, in-process ------------------------------------------------------------------------------------------


def run(node, **inputs):
    with torch.inference_mode():
        return node.execute(**inputs).result


@pytest.fixture(scope="module")
def face_nodes(comfy_host, insightface_root):
    import folder_paths

    from decoupled_ipadapter.nodes import apply, encode, faceid

    folder_paths.add_model_folder_path("insightface", str(insightface_root))
    return {"insightface": faceid.LoadInsightFace, "face": faceid.EncodeFace, "encode": encode.EncodeImage, "apply": apply.ApplyIPAdapter}


@pytest.fixture(scope="module")
def sd15(comfy_host):
    return tiny_comfy_model("SD1.5", seed=1)


def managed_faceid(tmp_path, model, kind, name, *, seed=3):
    """A random SD1.5 FaceID file (`kind`: faceid, portrait, plus; with its LoRA but for Portrait), loaded."""
    from tiny_models import faceid_adapter_state_dict

    parts = faceid_adapter_state_dict(kind, hidden_sizes=layer_hidden_sizes(model), text_width=768, seed=seed, lora=kind != "portrait")
    path = tmp_path / name
    torch.save(parts, str(path))
    return manage(load_adapter(str(path)))


def test_encode_face_node(face_nodes, sd15, insightface_root, tmp_path):
    from insightface.utils import face_align
    from tiny_clip_vision import tiny_clip_vision

    (analyser,) = run(face_nodes["insightface"], model_name=PACK, provider="CPU")
    pictures = torch.cat([face_picture(seed=1), face_picture(seed=2, centres=((0.4, 0.6),))])
    portrait = managed_faceid(tmp_path, sd15, "portrait", "ip-adapter-faceid-portrait_sd15.bin")
    embeds, _ = run(face_nodes["face"], ipadapter=portrait, insightface=analyser, image=pictures)
    assert embeds.clip_output == FACE_EMBEDDING and embeds.positive.shape == (2, 512)
    for index in range(2):
        assert np.array_equal(embeds.positive[index].numpy(), reference_embedding(insightface_root, pictures[index : index + 1]))
    assert torch.equal(embeds.negative, torch.zeros(2, 512))

    plus = managed_faceid(tmp_path, sd15, "plus", "ip-adapter-faceid-plusv2_sd15.bin")
    with pytest.raises(IPAdapterError, match="connect the ViT-H image encoder"):
        run(face_nodes["face"], ipadapter=plus, insightface=analyser, image=pictures[:1])
    clip_vision = tiny_clip_vision("ViT-H", tmp_path, seed=5)
    embeds, _ = run(face_nodes["face"], ipadapter=plus, insightface=analyser, image=pictures[:1], clip_vision=clip_vision)
    bgr = np.clip(255 * pictures[0].numpy(), 0, 255).astype(np.uint8)[:, :, ::-1]
    face = analyser.analysis.get(bgr)[0]
    crop_rgb = face_align.norm_crop(bgr, landmark=face.kps, image_size=224)[:, :, ::-1].copy()
    expected = clip_vision.encode_image(torch.from_numpy(crop_rgb).float().unsqueeze(0) / 255.0)["penultimate_hidden_states"]
    assert torch.equal(embeds.positive, expected), "Plus reads CLIP's hidden states of the aligned RGB face crop"
    assert np.array_equal(embeds.face_positive[0].numpy(), face.normed_embedding)
    with pytest.raises(IPAdapterError, match="IPAdapter Encode Face"):
        run(face_nodes["encode"], ipadapter=plus, clip_vision=clip_vision, image=pictures[:1])


def test_encode_face_gives_the_aligned_face_crops(face_nodes, sd15, insightface_root, tmp_path):
    """face_image: InsightFace's own norm_crop of each face used (RGB, 0..1), in the order of the embeds, pictures
    without a face left out; 224 px for SD1.5 adapters, 256 px for SDXL. FaceID Plus's CLIP input stays the 224 px
    crop on SDXL too (the reference's)."""
    from dataclasses import replace

    from tiny_clip_vision import tiny_clip_vision

    from decoupled_ipadapter.ipadapter_core.encoding import encode_faces

    (analyser,) = run(face_nodes["insightface"], model_name=PACK, provider="CPU")
    batch = torch.cat([face_picture(seed=2, centres=((0.4, 0.6),)), blank_picture(), face_picture(seed=1)])
    faceid = managed_faceid(tmp_path, sd15, "faceid", "ip-adapter-faceid_sd15.bin")
    embeds, face_image = run(face_nodes["face"], ipadapter=faceid, insightface=analyser, image=batch, skip_images_without_face=True)
    assert face_image.shape == (2, 224, 224, 3) and embeds.image_count == 2
    for row, index in enumerate((0, 2)):
        assert torch.equal(face_image[row], reference_crop(insightface_root, batch[index : index + 1], size=224))
        assert np.array_equal(embeds.positive[row].numpy(), reference_embedding(insightface_root, batch[index : index + 1]))

    plus = managed_faceid(tmp_path, sd15, "plus", "ip-adapter-faceid-plusv2_sd15.bin")
    clip_vision = tiny_clip_vision("ViT-H", tmp_path, seed=5)
    pictures = batch[2:]
    sd15_embeds, sd15_face_image = encode_faces(
        analyser, plus.adapter.spec, "plus", pictures, clip_vision, skip_missing=False, after_image=lambda: None
    )  # fmt: skip
    sdxl_spec = replace(plus.adapter.spec, base="SDXL")
    sdxl_embeds, sdxl_face_image = encode_faces(analyser, sdxl_spec, "plus", pictures, clip_vision, skip_missing=False, after_image=lambda: None)
    assert torch.equal(sd15_face_image[0], reference_crop(insightface_root, pictures, size=224))
    assert torch.equal(sdxl_face_image[0], reference_crop(insightface_root, pictures, size=256))
    assert torch.equal(sdxl_embeds.positive, sd15_embeds.positive), "Plus reads the 224 px crop with CLIP on SDXL too"


def test_encode_face_refuses_a_picture_without_face_and_a_file_that_is_not_faceid(face_nodes, sd15, tmp_path):
    from safetensors.torch import save_file
    from tiny_models import adapter_state_dict

    (analyser,) = run(face_nodes["insightface"], model_name=PACK, provider="CPU")
    faceid = managed_faceid(tmp_path, sd15, "faceid", "ip-adapter-faceid_sd15.bin")
    batch = torch.cat([face_picture(seed=1), blank_picture()])
    with pytest.raises(IPAdapterError, match="IPAdapter Encode Face: No face was found in image 1"):
        run(face_nodes["face"], ipadapter=faceid, insightface=analyser, image=batch)
    embeds, _ = run(face_nodes["face"], ipadapter=faceid, insightface=analyser, image=batch, skip_images_without_face=True)
    assert embeds.image_count == 1
    plain_path = tmp_path / "ip-adapter_sd15.safetensors"
    save_file(adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(sd15), text_width=768, seed=4), str(plain_path))
    with pytest.raises(IPAdapterError, match="is not an IP-Adapter FaceID file"):
        run(face_nodes["face"], ipadapter=manage(load_adapter(str(plain_path))), insightface=analyser, image=batch[:1])


def test_insightface_loader_refuses_missing_packs_and_packages(face_nodes, insightface_root, monkeypatch):
    loader, face = face_nodes["insightface"], face_nodes["face"]
    assert loader.validate_inputs(model_name=PACK, provider="CPU") is True
    message = loader.validate_inputs(model_name="antelopev2", provider="CPU")
    assert "'antelopev2' is not there" in message and "buffalo_l.zip" in message and "models/insightface/models/buffalo_l" in message
    assert "is not an option of provider" in loader.validate_inputs(model_name=PACK, provider="Nowhere")
    broken = insightface_root / "models" / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "det_10g.onnx").write_bytes(b"not an onnx model")
    (broken / "w600k_r50.onnx").write_bytes((insightface_root / "models" / PACK / "w600k_r50.onnx").read_bytes())
    with pytest.raises(IPAdapterError, match="Load InsightFace: The InsightFace pack 'broken' .* cannot be loaded"):
        run(loader, model_name="broken", provider="CPU")
    for module in ("insightface", "onnxruntime"):
        monkeypatch.setitem(__import__("sys").modules, module, None)  # hidden: `import insightface` fails
    for message in (loader.validate_inputs(model_name=PACK, provider="CPU"), face.validate_inputs()):
        assert 'pip install "insightface>=1.0,<3" "onnxruntime>=1.30.0,<2"' in message and "insightface and onnxruntime" in message





def test_without_the_optional_packages_only_the_faceid_nodes_are_refused(face_nodes, sd15, monkeypatch):
    """insightface and onnxruntime hidden (as if not installed): every node still describes itself, the FaceID nodes
    are refused at queue time with the pip command, and a plain IP-Adapter is still applied."""
    import sys

    from tiny_models import adapter_state_dict, nested

    from decoupled_ipadapter.ipadapter_core.adapter import LoadedAdapter
    from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
    from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
    from decoupled_ipadapter.ipadapter_core.face_analysis import FACEID_PIP
    from decoupled_ipadapter.ipadapter_core.unet.format import build_adapter_model, detect_spec
    from decoupled_ipadapter.nodes import NODES
    from decoupled_ipadapter.nodes.unified_loader import UnifiedLoaderFaceID

    for module in ("insightface", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)
    infos = {node.GET_NODE_INFO_V1()["name"]: node.GET_NODE_INFO_V1() for node in NODES}
    assert infos["DecoupledIPAdapterInsightFaceLoader"]["input"]["required"]["provider"][1]["options"] == ["CPU"]
    for message in (
        face_nodes["insightface"].validate_inputs(model_name=PACK, provider="CPU"),
        face_nodes["face"].validate_inputs(),
        UnifiedLoaderFaceID.validate_inputs(preset="FaceID", base="SD1.5", provider="CPU"),
    ):
        assert FACEID_PIP in message, message
    parts = nested(adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(sd15), text_width=768, seed=2))
    spec = detect_spec(parts, "ip-adapter_sd15.safetensors")
    adapter = LoadedAdapter(spec=spec, model=build_adapter_model(spec, parts, "test"), source="ip-adapter_sd15.safetensors")
    embeds = make_embeds(torch.randn(1, 1024), torch.zeros(1, 1024), clip_output="image_embeds")
    patched = apply_image_prompt(sd15, adapter, manage(adapter).weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
    assert patched is not sd15 and patched.model_options["transformer_options"]["patches_replace"]["attn2"]
