"""Issue proof in a real ComfyUI server: our four nodes beside a ControlNet and a T2I-Adapter, through the HTTP API.

One API-format workflow with the core loaders (CheckpointLoaderSimple, CLIPVisionLoader, ControlNetLoader twice),
our four nodes, ControlNetApplyAdvanced twice, KSampler, VAEDecode and SaveImage runs on local stand-ins with the
official SD1.5 shapes. Removing any one of the three controls changes the picture; λ = 0 gives the very picture of
the graph without our nodes; the same patched model samples twice in a row (the second time not from ComfyUI's
cache) to the same picture, and a batch of 2 runs; a bad file name and a mismatched image encoder give clear errors,
and the next prompt still runs.
"""

import io
import os
import shutil

import numpy
import pytest
from PIL import Image
from server_harness import (
    REJECTED,
    comfy_server,
    fetch_output_image,
    prompt_error,
    reference_png,
    run_prompt,
    standin_models,
    upload_image,
)

pytestmark = pytest.mark.server

CONTROLNET = "control_v11p_sd15_canny.safetensors"
T2I_ADAPTER = "t2iadapter_canny_sd15v2.safetensors"
VIT_G_ADAPTER = "ip-adapter_sd15_vit-G.safetensors"


def controls_workflow(*, reference: str, hint: str, ipadapter: str = "ip-adapter_sd15.safetensors", with_ipadapter=True,
                      with_controlnet=True, with_t2i=True, weight=0.8, batch=1, seed=3, denoise=1.0) -> dict:  # fmt: skip
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "vision": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"}},
        "cnet": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}},
        "t2i": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": T2I_ADAPTER}},
        "ref": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "hint": {"class_type": "LoadImage", "inputs": {"image": hint}},
        "ipa": {"class_type": "DecoupledIPAdapterLoader", "inputs": {"ipadapter_name": ipadapter}},
        "enc_a": {"class_type": "DecoupledIPAdapterEncode", "inputs": {"ipadapter": ["ipa", 0], "clip_vision": ["vision", 0], "image": ["ref", 0]}},
        "enc_b": {"class_type": "DecoupledIPAdapterEncode", "inputs": {"ipadapter": ["ipa", 0], "clip_vision": ["vision", 0], "image": ["hint", 0]}},
        "mix": {"class_type": "DecoupledIPAdapterCombineEmbeds", "inputs": {"embeds_1": ["enc_a", 0], "embeds_2": ["enc_b", 0], "method": "average"}},
        "apply": {"class_type": "DecoupledIPAdapterApply", "inputs": {"model": ["ckpt", 0], "ipadapter": ["ipa", 0], "embeds": ["mix", 0], "weight": weight, "start_at": 0.0, "end_at": 1.0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "best quality, high quality"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "monochrome, lowres, bad anatomy, worst quality, low quality"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "controls"}},
    }  # fmt: skip
    conditioning = (["pos", 0], ["neg", 0])
    for name, loader, present in (("apply_cnet", "cnet", with_controlnet), ("apply_t2i", "t2i", with_t2i)):
        if present:
            prompt[name] = {
                "class_type": "ControlNetApplyAdvanced",
                "inputs": {"positive": conditioning[0], "negative": conditioning[1], "control_net": [loader, 0],
                           "image": ["hint", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
            }  # fmt: skip
            conditioning = ([name, 0], [name, 1])
    model = ["apply", 0] if with_ipadapter else ["ckpt", 0]
    prompt["sampler"] = {
        "class_type": "KSampler",
        "inputs": {"model": model, "seed": seed, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                   "positive": conditioning[0], "negative": conditioning[1], "latent_image": ["latent", 0], "denoise": denoise},
    }  # fmt: skip
    if not with_ipadapter:
        for name in ("ipa", "enc_a", "enc_b", "mix", "apply", "vision"):
            del prompt[name]
    return prompt


def hint_png() -> bytes:
    """A white-on-black line drawing, the kind of picture a canny ControlNet reads."""
    pixels = numpy.zeros((64, 64, 3), dtype=numpy.uint8)
    pixels[10:54, 20] = pixels[10:54, 44] = pixels[10, 20:45] = pixels[53, 20:45] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The stand-ins, plus an ip-adapter_sd15_vit-G file (it needs the ViT-bigG encoder, which is not there)."""
    from official_shapes import write_official_file

    folder = tmp_path_factory.mktemp("models")
    source = standin_models()
    for kind in os.listdir(source):
        if (source / kind).is_dir():
            shutil.copytree(source / kind, folder / kind, copy_function=os.symlink)
    write_official_file("ip-adapter_sd15_vit-G", folder / "ipadapter", "safetensors")
    return folder


@pytest.fixture(scope="module")
def server(models):
    with comfy_server(models_dir=models) as running:
        running.reference = upload_image(running, reference_png(), "controls_reference.png")
        running.hint = upload_image(running, hint_png(), "controls_hint.png")
        yield running


def run_entry(server, **options) -> dict:
    return run_prompt(server, controls_workflow(reference=server.reference, hint=server.hint, **options))


def pictures(server, entry, count: int = 1) -> list[numpy.ndarray]:
    return [numpy.asarray(Image.open(io.BytesIO(fetch_output_image(server, entry, index)))) for index in range(count)]


def run(server, **options) -> list[numpy.ndarray]:
    return pictures(server, run_entry(server, **options), options.get("batch", 1))


def cached_nodes(entry: dict) -> set[str]:
    """The nodes ComfyUI served from its cache in this prompt (its execution_cached message in /history)."""
    return {node for event, data in entry["status"]["messages"] if event == "execution_cached" for node in data["nodes"]}


def test_all_three_controls_shape_the_picture(server):
    full = run(server)[0]
    assert full.shape == (64, 64, 3)
    for removed in ("with_ipadapter", "with_controlnet", "with_t2i"):
        without = run(server, **{removed: False})[0]
        assert not numpy.array_equal(without, full), f"removing {removed[5:]} did not change the picture"


def test_weight_zero_gives_the_picture_without_our_nodes(server):
    assert numpy.array_equal(run(server, weight=0.0)[0], run(server, with_ipadapter=False)[0])


def test_twice_in_a_row_and_a_batch_of_two(server):
    """The same patched model sampled again gives the same picture. The second prompt differs only in KSampler's
    denoise (0.99995 gives the full schedule, as 1.0 does), so ComfyUI serves our nodes from its cache, the same
    patched model object, and samples again: an identical prompt would be served whole from the cache."""
    first_entry = run_entry(server, seed=11)
    again_entry = run_entry(server, seed=11, denoise=0.99995)
    assert "sampler" not in cached_nodes(again_entry), "KSampler must run again"
    assert {"apply", "mix", "enc_a"} <= cached_nodes(again_entry), "with the same patched model"
    assert numpy.array_equal(pictures(server, first_entry)[0], pictures(server, again_entry)[0])
    batch = run(server, seed=11, batch=2)
    assert len(batch) == 2 and all(picture.shape == (64, 64, 3) for picture in batch)


def test_bad_file_name_and_wrong_encoder_fail_clearly_and_the_server_goes_on(server):
    for ipadapter, expected in (("missing.safetensors", ("Load IPAdapter", "missing.safetensors", "Put the file there")),
                                (VIT_G_ADAPTER, ("IPAdapter Encode Image", "ViT-bigG", "CLIPVisionLoader"))):  # fmt: skip
        message = prompt_error(server, controls_workflow(reference=server.reference, hint=server.hint, ipadapter=ipadapter))
        if message.startswith(REJECTED):  # refused at validation: the answer must name the file
            assert ipadapter in message, message
            continue
        assert all(part in message for part in expected), message  # else /history carries the node's message
    assert run(server, seed=5)[0].shape == (64, 64, 3), "the next prompt must still run"
