"""Bad inputs give an IPAdapterError that names the file or input and says what to do, and change nothing.

Files: not an IP-Adapter, truncated, empty, a pickle that carries code (refused, never run), FaceID with a broken LoRA, an unknown
extension. Applying: an adapter for the other base model, embeds from the wrong image encoder, empty or NaN embeds;
after each refusal the input model is as it was, and a good adapter still applies.
"""

import os
import pickle
import pickletools
import re
import shlex
import shutil

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import SD15_TEXT_WIDTH, SDXL_TEXT_WIDTH, adapter_state_dict, layer_hidden_sizes, nested, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.encoders import ENCODER_FILES, VIT_BIGG, VIT_H
from decoupled_ipadapter.ipadapter_core.embeds import ImagePromptEmbeds, make_embeds
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.memory import manage

SMALL_SD15_WIDTHS = (32,) * 16  # a structurally valid SD1.5 adapter, small enough to write in milliseconds
DOWNLOAD_AGAIN = r"[Dd]ownload it again"


def small_adapter(**overrides) -> dict[str, torch.Tensor]:
    options = dict(hidden_sizes=SMALL_SD15_WIDTHS, text_width=SD15_TEXT_WIDTH, seed=0, dtype=torch.float16)
    options.update(overrides)
    return adapter_state_dict("linear", **options)


def refusal(path) -> str:
    """The message of the IPAdapterError that loading `path` raises; it must name the file."""
    with pytest.raises(IPAdapterError) as info:
        load_adapter(str(path))
    message = str(info.value)
    assert os.path.basename(str(path)) in message, f"the message does not name the file: {message}"
    return message


# --- files -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [
        {"model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3), "model.diffusion_model.out.2.bias": (4,)},
        {"vision_model.embeddings.patch_embedding.weight": (32, 3, 14, 14), "visual_projection.weight": (16, 32)},
        {"ip_adapter.1.to_k_ip.weight": (32, 768)},  # half an adapter: no image_proj
    ],
    ids=["unet", "clip-vision", "no-image-proj"],
)
def test_a_file_that_is_not_an_ip_adapter(tmp_path, keys):
    path = tmp_path / "some_model.safetensors"
    save_file({key: torch.zeros(shape, dtype=torch.float16) for key, shape in keys.items()}, str(path))
    message = refusal(path)
    assert "is not an IP-Adapter file" in message
    assert "Load an official IP-Adapter checkpoint" in message


def test_a_bin_that_holds_no_dict(tmp_path):
    path = tmp_path / "tensor_only.bin"
    torch.save([torch.zeros(3)], str(path))
    message = refusal(path)
    assert "is not an IP-Adapter file" in message and "Load an official IP-Adapter" in message


@pytest.mark.parametrize("keep", [0.5, 0.999, 40 / 10**6], ids=["half", "last-bytes", "in-header"])
def test_a_truncated_safetensors_file(tmp_path, keep):
    whole = tmp_path / "whole.safetensors"
    save_file(small_adapter(), str(whole))
    data = whole.read_bytes()
    path = tmp_path / "ip-adapter_sd15.safetensors"
    path.write_bytes(data[: max(9, int(len(data) * keep))])
    message = refusal(path)
    assert "truncated or damaged" in message and re.search(DOWNLOAD_AGAIN, message)


@pytest.mark.parametrize("keep", [0.5, 0.999], ids=["half", "last-bytes"])
def test_a_truncated_bin_file(tmp_path, keep):
    whole = tmp_path / "whole.bin"
    torch.save(nested(small_adapter()), str(whole))
    data = whole.read_bytes()
    path = tmp_path / "ip-adapter_sd15.bin"
    path.write_bytes(data[: int(len(data) * keep)])
    message = refusal(path)
    assert "truncated or damaged" in message and re.search(DOWNLOAD_AGAIN, message)


@pytest.mark.parametrize("extension", ["safetensors", "bin"])
def test_an_empty_file(tmp_path, extension):
    path = tmp_path / f"ip-adapter_sd15.{extension}"
    path.write_bytes(b"")
    message = refusal(path)
    assert "is empty (0 bytes)" in message and re.search(DOWNLOAD_AGAIN, message)


class RunsAShellCommand:
    """Unpickling this calls os.system(command): what a malicious checkpoint does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def pickle_calls_os_system(data: bytes) -> bool:
    """Read the opcodes (never run them): does the pickle import os.system / posix.system and call it?"""
    words = {word for _, arg, _ in pickletools.genops(data) if isinstance(arg, str) for word in arg.split()}
    opcodes = {opcode.name for opcode, _, _ in pickletools.genops(data)}
    return "system" in words and bool(words & {"os", "posix", "nt"}) and "REDUCE" in opcodes


@pytest.mark.parametrize("container", ["torch-zip", "plain-pickle"])
def test_a_pickle_that_carries_code_is_refused_and_never_run(tmp_path, container):
    marker = tmp_path / "code_was_run"
    payload = RunsAShellCommand(f"touch {shlex.quote(str(marker))}")
    content = {"image_proj": payload, "ip_adapter": nested(small_adapter())["ip_adapter"]}
    path = tmp_path / "ip-adapter_sd15.bin"
    if container == "torch-zip":
        torch.save(content, str(path))
        import zipfile

        with zipfile.ZipFile(path) as archive:
            data = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    else:
        data = pickle.dumps(content, protocol=2)
        path.write_bytes(data)
    assert pickle_calls_os_system(data), "the test file must really carry a call to os.system"

    message = refusal(path)
    assert not marker.exists(), "loading the file ran the code in its pickle"
    assert "carries code" in message and "Use the official .safetensors" in message


def test_a_faceid_file_with_a_broken_lora_is_refused_with_a_clear_message(tmp_path):
    flat = small_adapter()
    flat = {key: value for key, value in flat.items() if not key.startswith("image_proj.")}
    flat.update(
        {
            "image_proj.proj.0.weight": torch.zeros(1024, 512, dtype=torch.float16),
            "image_proj.proj.0.bias": torch.zeros(1024, dtype=torch.float16),
            "image_proj.proj.2.weight": torch.zeros(3072, 1024, dtype=torch.float16),
            "image_proj.proj.2.bias": torch.zeros(3072, dtype=torch.float16),
            "image_proj.norm.weight": torch.ones(768, dtype=torch.float16),
            "image_proj.norm.bias": torch.zeros(768, dtype=torch.float16),
        }
    )
    for index, hidden in enumerate(SMALL_SD15_WIDTHS):
        for number, width in ((2 * index, hidden), (2 * index + 1, SD15_TEXT_WIDTH)):
            flat[f"ip_adapter.{number}.to_q_lora.down.weight"] = torch.zeros(128, hidden, dtype=torch.float16)
            flat[f"ip_adapter.{number}.to_k_lora.down.weight"] = torch.zeros(128, width, dtype=torch.float16)
    path = tmp_path / "ip-adapter-faceid_sd15.bin"
    torch.save(nested(flat), str(path))
    message = refusal(path)  # down weights without their up weights
    assert "ip-adapter-faceid_sd15.bin" in message and "FaceID LoRA is incomplete" in message
    assert "download it again" in message


def test_an_unknown_extension(tmp_path):
    path = tmp_path / "ip-adapter_sd15.onnx"
    save_file(small_adapter(), str(path))  # valid contents: the extension alone decides
    message = refusal(path)
    assert "unknown extension" in message and "Use the official .safetensors version of this adapter" in message


def test_a_missing_file(tmp_path):
    message = refusal(tmp_path / "ip-adapter_sd15.safetensors")
    assert "does not exist" in message and "models/ipadapter" in message


def test_a_file_with_missing_layers(tmp_path):
    flat = {key: value for key, value in small_adapter().items() if not key.startswith("ip_adapter.31.")}
    path = tmp_path / "ip-adapter_sd15.safetensors"
    save_file(flat, str(path))
    message = refusal(path)
    assert "15 cross-attention layers" in message and "Use an official SD1.5 or SDXL IP-Adapter file" in message


# --- applying ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15(comfy_host):
    return tiny_comfy_model("SD1.5", seed=5)


@pytest.fixture(scope="module")
def sdxl(comfy_host):
    return tiny_comfy_model("SDXL", seed=6)


@pytest.fixture(scope="module")
def adapters(sd15, sdxl, tmp_path_factory):
    """Tiny-model adapters under official file names, loaded from disk and under ComfyUI's memory management."""
    directory = tmp_path_factory.mktemp("bad_inputs_adapters")
    sd15_widths, sdxl_widths = layer_hidden_sizes(sd15), layer_hidden_sizes(sdxl)
    files = {
        "ip-adapter_sd15": ("linear", sd15_widths, SD15_TEXT_WIDTH, 1024),
        "ip-adapter_sd15_vit-G": ("linear", sd15_widths, SD15_TEXT_WIDTH, 1280),
        "ip-adapter-plus_sd15": ("resampler", sd15_widths, SD15_TEXT_WIDTH, 1280),
        "ip-adapter_sdxl_vit-h": ("linear", sdxl_widths, SDXL_TEXT_WIDTH, 1024),
    }
    loaded = {}
    for seed, (name, (projection, widths, text_width, embedding_dim)) in enumerate(files.items()):
        flat = adapter_state_dict(
            projection, hidden_sizes=widths, text_width=text_width, seed=seed,
            embedding_dim=embedding_dim, dtype=torch.float16,
        )  # fmt: skip
        path = directory / f"{name}.safetensors"
        save_file(flat, str(path))
        loaded[name] = manage(load_adapter(str(path)))
    assert len(sd15_widths) == 16 and len(sdxl_widths) == 70
    yield loaded
    shutil.rmtree(directory, ignore_errors=True)


def attn2_patches(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def patched_layers(model) -> set:
    """The layer keys (block name, block id, index) among the attn2 keys; SD1.5's (block, id) keys name the same layers."""
    return {key for key in attn2_patches(model) if len(key) == 3}


def apply(model, managed, embeds):
    return apply_image_prompt(model, managed.adapter, managed.weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)


def refused_apply(model, managed, embeds) -> str:
    """Apply must raise IPAdapterError and leave `model` exactly as it was; returns the message."""
    options_before = repr(model.model_options)
    patches_before = dict(model.patches)
    with pytest.raises(IPAdapterError) as info:
        apply(model, managed, embeds)
    assert not attn2_patches(model), "a refused apply left attn2 patches on the input model"
    assert repr(model.model_options) == options_before and model.patches == patches_before
    return str(info.value)


def assert_good_adapter_applies(model, managed, embeds, layers: int) -> None:
    patched = apply(model, managed, embeds)
    assert len(patched_layers(patched)) == layers and not attn2_patches(model)


def vit_h_image_embeds(rows: int = 1):
    generator = torch.Generator().manual_seed(rows)
    return make_embeds(torch.randn(rows, 1024, generator=generator), torch.zeros(1, 1024), clip_output="image_embeds")


def test_an_sdxl_adapter_on_an_sd15_model(sd15, adapters):
    message = refused_apply(sd15, adapters["ip-adapter_sdxl_vit-h"], vit_h_image_embeds())
    assert "'ip-adapter_sdxl_vit-h.safetensors' is an SDXL IP-Adapter (70 layers, text width 2048)" in message
    assert "SD1.5 model (16 cross-attention layers, text width 768)" in message
    assert "Load an IP-Adapter made for SD1.5, for example ip-adapter_sd15.safetensors" in message
    assert_good_adapter_applies(sd15, adapters["ip-adapter_sd15"], vit_h_image_embeds(), 16)


def test_an_sd15_adapter_on_an_sdxl_model(sdxl, adapters):
    message = refused_apply(sdxl, adapters["ip-adapter_sd15"], vit_h_image_embeds())
    assert "'ip-adapter_sd15.safetensors' is an SD1.5 IP-Adapter (16 layers, text width 768)" in message
    assert "SDXL model (70 cross-attention layers, text width 2048)" in message
    assert "Load an IP-Adapter made for SDXL, for example ip-adapter_sdxl_vit-h.safetensors" in message
    assert_good_adapter_applies(sdxl, adapters["ip-adapter_sdxl_vit-h"], vit_h_image_embeds(), 70)


def encoder_file(encoder: str) -> str:
    return ENCODER_FILES[encoder].split(" ")[0]


@pytest.mark.parametrize(
    "adapter_name, positive, clip_output, needed, have",
    [
        ("ip-adapter_sd15", (1, 1280), "image_embeds", VIT_H, VIT_BIGG),  # bigG image embeds for a ViT-H adapter
        ("ip-adapter_sd15_vit-G", (2, 1024), "image_embeds", VIT_BIGG, VIT_H),  # ViT-H image embeds for a bigG one
        ("ip-adapter-plus_sd15", (1, 257, 1664), "penultimate_hidden_states", VIT_H, VIT_BIGG),
    ],
    ids=["bigG-embeds-for-vit-h", "vit-h-embeds-for-vit-g", "bigG-hidden-states-for-plus"],
)
def test_embeds_from_the_wrong_image_encoder(sd15, adapters, adapter_name, positive, clip_output, needed, have):
    embeds = make_embeds(torch.randn(positive), torch.zeros(1, *positive[1:]), clip_output=clip_output)
    message = refused_apply(sd15, adapters[adapter_name], embeds)
    assert f"'{adapter_name}.safetensors'" in message
    assert f"needs embeds from the {needed} image encoder, but these come from {have}" in message
    assert f"Load {encoder_file(needed)}" in message and "CLIPVisionLoader" in message


def test_image_embeds_given_to_a_plus_adapter(sd15, adapters):
    message = refused_apply(sd15, adapters["ip-adapter-plus_sd15"], vit_h_image_embeds())
    assert "'ip-adapter-plus_sd15.safetensors' (ip-adapter-plus_sd15) reads the CLIP penultimate hidden states" in message
    assert "these embeds hold image embeds" in message
    assert "Encode the image with this adapter connected to the Encode node" in message
    assert encoder_file("ViT-H") in message and "CLIPVisionLoader" in message


def test_empty_embeds(sd15, adapters):
    with pytest.raises(IPAdapterError, match="at least one image"):
        make_embeds(torch.zeros(0, 1024), torch.zeros(1, 1024), clip_output="image_embeds")
    empty = ImagePromptEmbeds(positive=torch.zeros(0, 1024), negative=torch.zeros(0, 1024), clip_output="image_embeds")
    message = refused_apply(sd15, adapters["ip-adapter_sd15"], empty)
    assert "empty" in message and "Connect at least one reference image" in message


@pytest.mark.parametrize("where", ["positive", "negative"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_infinite_embeds(sd15, adapters, where, value):
    positive, negative = torch.randn(2, 1024), torch.zeros(1, 1024)
    (positive if where == "positive" else negative)[0, 7] = value
    message = refused_apply(sd15, adapters["ip-adapter_sd15"], make_embeds(positive, negative, clip_output="image_embeds"))
    assert "NaN or infinite" in message and "Re-encode the reference images" in message


def unet_output(model, seed: int = 0, *, cond_or_uncond=(0, 1)) -> torch.Tensor:
    """One UNet evaluation of a [cond, uncond] batch, with the model's transformer_options (patches included);
    `cond_or_uncond` None: a caller that names no conditioning positions."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, SD15_TEXT_WIDTH, generator=generator)
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(sigmas=torch.ones(2))
    if cond_or_uncond is not None:
        options.update(cond_or_uncond=list(cond_or_uncond))
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps=torch.full((2,), 500.0), context=text, transformer_options=options)


def test_a_good_adapter_still_works_after_every_refusal(sd15, adapters):
    """Refusals of every kind on one model, then a good adapter applies and changes the UNet's output."""
    plain = unet_output(sd15)
    bigg_embeds = make_embeds(torch.randn(1, 1280), torch.zeros(1, 1280), clip_output="image_embeds")
    nan_embeds = make_embeds(torch.full((1, 1024), float("nan")), torch.zeros(1, 1024), clip_output="image_embeds")
    bad_cases = [
        (adapters["ip-adapter_sdxl_vit-h"], vit_h_image_embeds()),  # the other base model
        (adapters["ip-adapter_sd15"], bigg_embeds),  # the wrong image encoder
        (adapters["ip-adapter-plus_sd15"], vit_h_image_embeds()),  # the wrong CLIP output
        (adapters["ip-adapter_sd15"], nan_embeds),
    ]
    for managed, embeds in bad_cases:
        refused_apply(sd15, managed, embeds)
    assert torch.equal(unet_output(sd15), plain), "the input model must compute exactly as before"
    patched = apply(sd15, adapters["ip-adapter_sd15"], vit_h_image_embeds())
    assert len(patched_layers(patched)) == 16
    output = unet_output(patched)
    assert torch.isfinite(output).all()
    assert (output - plain).abs().max() > 1e-3, "the good adapter must change the output"


def test_a_model_call_without_conditioning_positions_is_refused(sd15, adapters):
    """Without `cond_or_uncond` nothing says which rows are unconditional: refused, not the image prompt on every row."""
    patched = apply(sd15, adapters["ip-adapter_sd15"], vit_h_image_embeds())
    with pytest.raises(IPAdapterError, match=r"without transformer_options 'cond_or_uncond'.*ComfyUI sampler"):
        unet_output(patched, cond_or_uncond=None)
    assert torch.isfinite(unet_output(sd15, cond_or_uncond=None)).all()  # the unpatched model takes such a call
