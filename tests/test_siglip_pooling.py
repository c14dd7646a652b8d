"""SigLIP's pooled output for the InstantX FLUX.1-dev IP-Adapter: the attention-pooling head read from the encoder
file equals transformers' `SiglipVisionModel(...).pooler_output` (a test-only oracle) on the same weights, alone and
after ComfyUI's encoder on the whole picture resized to the encoder's square (the reference's preprocessing, Encode's
default); a file without the head is refused when the prompt is queued, naming one that has it; Encode gives every
batch row the image's own tokens unless a negative image is given."""

import pytest
import torch
from safetensors.torch import save_file
from tiny_clip_vision import IMAGE_SIZE, LAYERS, PATCH_SIZE, tiny_clip_vision, tiny_siglip_vision
from tiny_flux import SIGLIP_WIDTH, instantx_adapter_parts
from tiny_models import fill_random_

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

HEADS = 16
POOLED = "siglip_pooled_output"


def transformers_siglip(seed: int):
    """transformers' SigLIP vision model with the tiny encoder's sizes (tiny_clip_vision) and so400m's width, random."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=SIGLIP_WIDTH, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    )  # fmt: skip
    return fill_random_(SiglipVisionModel(config), seed=seed).eval()


@pytest.fixture(scope="module")
def siglip_files(comfy_host, tmp_path_factory):
    """A SigLIP file with its head (the key layout of google's files: `vision_model.*`) and the same file without it,
    in a clip_vision folder."""
    import folder_paths

    root = tmp_path_factory.mktemp("siglip")
    model = transformers_siglip(seed=5)
    prefix = "" if next(iter(model.state_dict())).startswith("vision_model.") else "vision_model."
    weights = {prefix + key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(weights, str(root / "siglip-with-head.safetensors"))
    save_file({key: value for key, value in weights.items() if ".head." not in key}, str(root / "siglip-headless.safetensors"))
    folder_paths.add_model_folder_path("clip_vision", str(root))
    yield model, root, weights
    folder_paths.folder_names_and_paths["clip_vision"][0].remove(str(root))


def comfy_siglip(root, weights):
    """ComfyUI's SigLIP (tiny config) with the same encoder weights, and the head read from the file."""
    from decoupled_ipadapter.ipadapter_core.siglip_pooling import with_pooling_head

    clip_vision = tiny_siglip_vision(root)
    missing, _ = clip_vision.load_sd({key: value for key, value in weights.items() if ".head." not in key})
    assert not missing
    return with_pooling_head(clip_vision, str(root / "siglip-with-head.safetensors"))


def test_the_pooling_head_equals_transformers_pooler_output(siglip_files):
    from decoupled_ipadapter.ipadapter_core.siglip_pooling import load_pooling_head

    model, root, weights = siglip_files
    pixels = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out = model(pixel_values=pixels)
    head = load_pooling_head(str(root / "siglip-with-head.safetensors"), heads=HEADS)
    ours = head(out.last_hidden_state)
    scale = out.pooler_output.abs().max().item()
    assert scale > 1e-2
    torch.testing.assert_close(ours, out.pooler_output, rtol=0, atol=1e-5 * scale)


def test_encode_reads_the_pooled_output_of_the_whole_picture_resized(siglip_files):
    """Encode's default: ComfyUI's encoder on the whole (not square) picture resized to 384² (here the tiny size),
    then the head: transformers' pooler_output on the same pixels, to ComfyUI's encoder's LayerNorm eps (1e-5, where
    SigLIP has 1e-6)."""
    import comfy.clip_vision

    from decoupled_ipadapter.ipadapter_core.encoding import clip_vision_output

    model, root, weights = siglip_files
    clip_vision = comfy_siglip(root, weights)
    picture = torch.rand(1, 48, 80, 3, generator=torch.Generator().manual_seed(2))
    ours = clip_vision_output(clip_vision, picture, clip_output=POOLED)
    pixels = comfy.clip_vision.clip_preprocess(picture, size=IMAGE_SIZE, mean=[0.5] * 3, std=[0.5] * 3, crop=False)
    cropped = comfy.clip_vision.clip_preprocess(picture, size=IMAGE_SIZE, mean=[0.5] * 3, std=[0.5] * 3, crop=True)
    with torch.no_grad():
        theirs, of_crop = (model(pixel_values=p).pooler_output for p in (pixels, cropped))
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4 * scale)
    assert (of_crop - theirs).abs().max() > 1e-2 * scale, "a centre crop must read another picture"


def test_encode_gives_every_row_the_image_unless_a_negative_image_is_given(siglip_files, tmp_path):
    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.encoding import encode_image_prompt

    model, root, weights = siglip_files
    torch.save(instantx_adapter_parts(hidden_size=256, layers=4, seed=3), str(tmp_path / "ip-adapter.bin"))
    adapter = load_adapter(str(tmp_path / "ip-adapter.bin"))
    clip_vision = comfy_siglip(root, weights)
    images = torch.rand(2, 40, 40, 3, generator=torch.Generator().manual_seed(3))
    embeds = encode_image_prompt(clip_vision, adapter.spec, adapter.source, images, None, after_batch=lambda count: None)
    assert embeds.clip_output == POOLED and embeds.positive.shape == (2, SIGLIP_WIDTH)
    assert torch.equal(embeds.negative, embeds.positive)
    negative = encode_image_prompt(clip_vision, adapter.spec, adapter.source, images[:1], images[1:], after_batch=lambda count: None)
    torch.testing.assert_close(negative.negative, embeds.positive[1:], rtol=1e-5, atol=1e-5)  # encoded alone, not batched
    torch.testing.assert_close(negative.positive, embeds.positive[:1], rtol=1e-5, atol=1e-5)
    assert (negative.negative - negative.positive).abs().max() > 1e-2
    with pytest.raises(IPAdapterError, match=r"needs the SigLIP so400m image encoder .* is CLIP ViT-L\. Load "
                       r"siglip-so400m-patch14-384\.safetensors .* with Load SigLIP Vision \(pooled\)\."):
        encode_image_prompt(tiny_clip_vision("ViT-L", tmp_path), adapter.spec, adapter.source, images, None, after_batch=lambda count: None)
    headless = tiny_siglip_vision(tmp_path)
    with pytest.raises(IPAdapterError, match="pooled output, whose attention-pooling head ComfyUI's Load CLIP Vision drops. Load the encoder with Load SigLIP Vision"):
        encode_image_prompt(headless, adapter.spec, adapter.source, images, None, after_batch=lambda count: None)


def test_the_siglip_loader_refuses_a_file_without_the_head_when_queued(siglip_files):
    from decoupled_ipadapter.nodes.siglip_loader import LoadSigLIPVision

    assert LoadSigLIPVision.validate_inputs(clip_name="siglip-with-head.safetensors") is True
    refusal = LoadSigLIPVision.validate_inputs(clip_name="siglip-headless.safetensors")
    assert "'siglip-headless.safetensors' has no SigLIP attention-pooling head" in refusal
    assert "siglip-so400m-patch14-384.safetensors (model.safetensors of google/siglip-so400m-patch14-384" in refusal
