"""Stand-in model files: the official key names and shapes, random values, built from ComfyUI's own model classes.

They let the example workflow run through ComfyUI's stock loaders (CheckpointLoaderSimple, CLIPVisionLoader,
ControlNetLoader, UNETLoader, CLIPLoader, VAELoader) and the pack's Load IPAdapter on a machine without the real downloads. Pictures made with them
are noise: they check the pipeline, not the quality.

    python devkit/standins.py [--dir DIR]

DIR defaults to $DECOUPLED_IPADAPTER_STANDINS, else ${XDG_CACHE_HOME:-~/.cache}/decoupled-ipadapter/standins,
and gets ComfyUI's models layout (checkpoints/, clip_vision/, ipadapter/, controlnet/, diffusion_models/,
text_encoders/, vae/). `--groups` picks the files: demo (the default: what the demo and the server tests use),
workflows (the other SD1.5 files the example workflows name), sdxl (a full-size SDXL base checkpoint, written tensor
by tensor, and its adapter), flux (a FLUX.1-shaped transformer with 2 double blocks, CLIP-L text, ViT-L/14, the
16-channel VAE, an XLabs and an InstantX adapter, SigLIP so400m with its pooling head; see FLUX_MODEL below), sd3 (an SD3-detected MMDiT checkpoint, SigLIP so400m, an
InstantX adapter; see SD3_CHECKPOINT below). Needs the ComfyUI host:
COMFYUI_DIR names its folder (default: the repo's .host/ComfyUI), and this script must run with the host's Python.
Every file is written under a temporary name, renamed, and recorded in a stamp file; a second run finds them and
does nothing. demo: about 4 GB of fp16 files, 40-90 s on two CPU cores; workflows: 3.2 GB more; sdxl: 7.7 GB more;
flux: 3.7 GB more, about 2 min; sd3: 1.2 GB more (with flux's clip_l), about 60 s.
"""

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import repo_paths  # noqa: F401  (devkit/ and tools/ on sys.path)
from model_configs import SD15_UNET, SD_VAE, SDXL_UNET

REPO = Path(__file__).resolve().parents[1]
# Raise when what the files hold changes: files recorded under another version are made again.
FORMAT_VERSION = 1
STAMP = "standins.json"
METADATA = {"decoupled_ipadapter": "stand-in with random weights (devkit/standins.py); not a trained model"}

CHECKPOINT = "checkpoints/v1-5-pruned-emaonly.safetensors"
CLIP_VISION = "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
IPADAPTER = "ipadapter/ip-adapter_sd15.safetensors"
CONTROLNET = "controlnet/control_v11p_sd15_canny.safetensors"
T2I_ADAPTER = "controlnet/t2iadapter_canny_sd15v2.safetensors"
FILES = (CHECKPOINT, CLIP_VISION, IPADAPTER, CONTROLNET, T2I_ADAPTER)
# For the example workflows (workflows/): the names the workflows use.
FINETUNE_CHECKPOINT = "checkpoints/DreamShaper_8_pruned.safetensors"  # a second SD1.5 checkpoint (other random values)
IPADAPTER_PLUS = "ipadapter/ip-adapter-plus_sd15.safetensors"
CONTROLNET_PTH = "controlnet/control_v11p_sd15_canny.pth"  # lllyasviel/ControlNet-v1-1 ships .pth files
T2I_ADAPTER_PTH = "controlnet/t2iadapter_canny_sd15v2.pth"  # so does TencentARC/T2I-Adapter
# FaceID (workflows 18-20): the SD1.5 files at full size with their rank-128 LoRA, and InsightFace's buffalo_l pack
# as the synthetic one of devkit/tiny_insightface.py (its detector finds the bright square of the face pictures).
FACEID_SD15 = "ipadapter/ip-adapter-faceid_sd15.bin"
FACEID_PLUSV2_SD15 = "ipadapter/ip-adapter-faceid-plusv2_sd15.bin"
FACEID_PORTRAIT_SD15 = "ipadapter/ip-adapter-faceid-portrait-v11_sd15.bin"
INSIGHTFACE_DETECTOR = "insightface/models/buffalo_l/det_10g.onnx"
INSIGHTFACE_RECOGNISER = "insightface/models/buffalo_l/w600k_r50.onnx"
FACEID_FILES = (FACEID_SD15, FACEID_PLUSV2_SD15, FACEID_PORTRAIT_SD15, INSIGHTFACE_DETECTOR, INSIGHTFACE_RECOGNISER)
WORKFLOW_FILES = (FINETUNE_CHECKPOINT, IPADAPTER_PLUS, CONTROLNET_PTH, T2I_ADAPTER_PTH, *FACEID_FILES)
# SDXL at full size (ComfyUI detects SDXL from the real layer sizes only): about 6.9 GB, written tensor by tensor.
SDXL_CHECKPOINT = "checkpoints/sd_xl_base_1.0.safetensors"
IPADAPTER_PLUS_SDXL = "ipadapter/ip-adapter-plus_sdxl_vit-h.safetensors"
FACEID_SDXL = "ipadapter/ip-adapter-faceid_sdxl.bin"
SDXL_FILES = (SDXL_CHECKPOINT, IPADAPTER_PLUS_SDXL, FACEID_SDXL, INSIGHTFACE_DETECTOR, INSIGHTFACE_RECOGNISER)
# Flux under FLUX.1-dev's file names. ComfyUI 0.3.75 takes Flux's 24 heads as given, so the transformer has FLUX.1's
# full width (3072) but 2 double and 1 single block (about 0.7 B parameters), and its text input is 768 wide: CLIP-L's
# output, so a stand-in clip_l text encoder alone conditions it (CLIPLoader). A real T5-XXL (4.7 B parameters, always
# built at full size by ComfyUI) is too big for CPU tests: the t5xxl file is a placeholder that only makes the name
# exist in the text_encoders folder (tests/workflow_checks.py swaps the workflow's DualCLIPLoader for CLIPLoader).
FLUX_MODEL = "diffusion_models/flux1-dev.safetensors"
FLUX_CLIP_L = "text_encoders/clip_l.safetensors"
FLUX_T5XXL = "text_encoders/t5xxl_fp16.safetensors"
FLUX_VAE = "vae/ae.safetensors"
CLIP_VISION_L = "clip_vision/clip_vision_l.safetensors"
XLABS_IPADAPTER = "ipadapter/flux-ip-adapter.safetensors"
# The InstantX Flux adapter of the Flux stand-in's width and its 2 + 1 blocks (4 tokens, a small inner width), and a
# full-size SigLIP so400m that keeps the pooling head (`vision_model.head.*`), as google's file does.
INSTANTX_FLUX_IPADAPTER = "ipadapter/flux1-dev-ip-adapter-instantx.bin"
SIGLIP_WITH_HEAD = "clip_vision/siglip-so400m-patch14-384.safetensors"
FLUX_FILES = (FLUX_MODEL, FLUX_CLIP_L, FLUX_T5XXL, FLUX_VAE, CLIP_VISION_L, XLABS_IPADAPTER, INSTANTX_FLUX_IPADAPTER,
              SIGLIP_WITH_HEAD)  # fmt: skip
FLUX_DOUBLE_BLOCKS, FLUX_SINGLE_BLOCKS, FLUX_HEADS = 2, 1, 24
CLIP_L_WIDTH = 768
# SD3.5 Large under its file names. ComfyUI's MMDiT has as many heads (of 64) as joint blocks, so an SD3.5-detected
# transformer cannot keep SD3.5 Large's width with few blocks: the checkpoint holds devkit/tiny_sd3.py's MMDiT (3
# joint blocks, width 192, SD3.5's text, pooled and latent widths) and the 16-channel VAE. The adapter has its width
# and blocks (and the tests' small resampler); SigLIP so400m is full size (ComfyUI detects it from its 27 layers and
# 729 positions). The text encoders of the workflow: clip_l (Flux's stand-in) conditions it alone (CLIPLoader, type
# sd3: ComfyUI pads CLIP-L's output to SD3's widths); clip_g and t5xxl are placeholders (workflow_checks swaps the
# workflow's TripleCLIPLoader for CLIPLoader).
SD3_CHECKPOINT = "checkpoints/sd3.5_large.safetensors"
SD3_CLIP_G = "text_encoders/clip_g.safetensors"
SIGLIP_VISION = "clip_vision/sigclip_vision_patch14_384.safetensors"
INSTANTX_IPADAPTER = "ipadapter/ip-adapter.bin"
SD3_FILES = (SD3_CHECKPOINT, FLUX_CLIP_L, SD3_CLIP_G, FLUX_T5XXL, SIGLIP_VISION, INSTANTX_IPADAPTER)
SD3_JOINT_BLOCKS = 3
GROUPS = {"demo": FILES, "workflows": WORKFLOW_FILES, "sdxl": SDXL_FILES, "flux": FLUX_FILES, "sd3": SD3_FILES}
ALL_FILES = tuple(dict.fromkeys(FILES + WORKFLOW_FILES + SDXL_FILES + FLUX_FILES + SD3_FILES))

def default_dir() -> Path:
    if os.environ.get("DECOUPLED_IPADAPTER_STANDINS"):
        return Path(os.environ["DECOUPLED_IPADAPTER_STANDINS"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "decoupled-ipadapter" / "standins"


def default_comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR") or REPO / ".host" / "ComfyUI")


def _read_stamp(directory: Path) -> dict:
    try:
        stamp = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stamp, dict) or stamp.get("version") != FORMAT_VERSION:
        return {}
    return stamp.get("files", {})


def _write_stamp(directory: Path, files: dict) -> None:
    partial = directory / f"{STAMP}.partial-{os.getpid()}"
    partial.write_text(json.dumps({"version": FORMAT_VERSION, "files": files}, indent=1, sort_keys=True))
    os.replace(partial, directory / STAMP)


def _is_recorded(directory: Path, name: str, files: dict) -> bool:
    path = directory / name
    return name in files and path.is_file() and path.stat().st_size == files[name]


def _names(groups) -> tuple[str, ...]:
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown stand-in group(s) {sorted(unknown)}; known: {sorted(GROUPS)}")
    return tuple(dict.fromkeys(name for group in groups for name in GROUPS[group]))


def is_complete(directory: Path, groups=("demo",)) -> bool:
    """True when every stand-in file of `groups` is there, recorded in the stamp with its size (cheap: no imports)."""
    files = _read_stamp(directory)
    return all(_is_recorded(directory, name, files) for name in _names(groups))


def ensure(directory: Path | None = None, *, python: str = sys.executable, comfyui_dir: Path | None = None,
           groups=("demo",)) -> Path:  # fmt: skip
    """The stand-in folder with the files of `groups` ("demo": the demo's and the server tests'; "workflows": the
    other SD1.5 files the example workflows name; "sdxl": a full-size SDXL checkpoint and its adapter; "flux": the
    Flux workflow's files), generated
    first if incomplete: in a child process (it needs several GB of memory for a while) that prints its progress
    to this process's output."""
    directory = Path(directory or default_dir())
    if not is_complete(directory, groups):
        environment = dict(os.environ, COMFYUI_DIR=str(comfyui_dir or default_comfyui_dir()))
        command = [python, str(Path(__file__).resolve()), "--dir", str(directory), "--groups", *groups]
        code = subprocess.run(command, env=environment).returncode
        if code != 0 or not is_complete(directory, groups):
            raise RuntimeError(f"generating stand-in models in {directory} failed (exit code {code}; output above)")
    return directory


@contextlib.contextmanager
def _locked(directory: Path):
    """One generator at a time per folder (a test run and a demo may start together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _import_comfy(comfyui_dir: Path):
    if not (comfyui_dir / "comfy" / "model_management.py").is_file():
        raise SystemExit(f"standins: {comfyui_dir} is not a ComfyUI folder; set COMFYUI_DIR")
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported, or it looks for CUDA


def _randomised(module, *, seed: int):
    """Fan-in-scaled weights keep activations finite through the random nets (ComfyUI's classes skip init)."""
    import tiny_models

    return tiny_models.fill_random_(module, seed=seed)


def _half(state_dict: dict, prefix: str = "") -> dict:
    import torch

    return {prefix + key: value.detach().to(torch.float16).contiguous() for key, value in state_dict.items()}


def _checkpoint(*, seed: int = 1):
    import comfy.ldm.models.autoencoder
    import comfy.sd1_clip
    import comfy.supported_models
    import torch

    model_config = comfy.supported_models.SD15(dict(SD15_UNET))
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    _randomised(model.diffusion_model, seed=seed)
    text_encoder = _randomised(comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16), seed=seed + 1)
    vae = _randomised(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE), embed_dim=4), seed=seed + 2)
    weights = _state_dict_for_saving(
        model, clip_state_dict=_half(text_encoder.state_dict(), "clip_l."), vae_state_dict=_half(vae.state_dict())
    )
    return _half(weights)


def _state_dict_for_saving(model, **parts) -> dict:
    """A checkpoint's tensors as ComfyUI saves them. Newer ComfyUI's BaseModel.state_dict_for_saving takes the UNet's
    state dict as its first argument; older ones read it from the model."""
    import inspect

    if "unet_state_dict" in inspect.signature(model.state_dict_for_saving).parameters:
        return model.state_dict_for_saving(model.diffusion_model.state_dict(), **parts)
    return model.state_dict_for_saving(**parts)


def _clip_vision(config_name: str = "clip_vision_config_h.json", *, seed: int = 4):
    import comfy.clip_vision

    config = Path(comfy.clip_vision.__file__).with_name(config_name)
    encoder = comfy.clip_vision.ClipVisionModel(str(config))
    return _half(_randomised(encoder.model, seed=seed).state_dict())


def flux_standin_config() -> dict:
    """The Flux stand-in's configuration (ComfyUI's Flux parameters): FLUX.1's widths, few blocks, CLIP-L text."""
    import tiny_flux

    config = tiny_flux.tiny_flux_config(
        double_blocks=FLUX_DOUBLE_BLOCKS, single_blocks=FLUX_SINGLE_BLOCKS, heads=FLUX_HEADS
    )
    return {**config, "context_in_dim": CLIP_L_WIDTH}


def _flux_model():
    """The transformer as flux1-dev.safetensors stores it (no prefix), built by ComfyUI's Flux model config and
    checked with ComfyUI's own detection."""
    import comfy.model_detection
    import comfy.supported_models
    import tiny_flux
    import torch

    model_config = tiny_flux.flux_model_config(flux_standin_config())
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    weights = _half(_randomised(model.diffusion_model, seed=51).state_dict())
    detected = comfy.model_detection.model_config_from_unet(weights, "")
    if not isinstance(detected, comfy.supported_models.Flux) or detected.unet_config["depth"] != FLUX_DOUBLE_BLOCKS:
        raise RuntimeError(f"standins: ComfyUI detects the Flux stand-in as {type(detected).__name__}")
    return weights


def _clip_l_text():
    """clip_l.safetensors: CLIP ViT-L/14's text encoder under the keys of the released file (`text_model.`,
    `text_projection.weight`)."""
    import comfy.sd1_clip
    import torch

    encoder = _randomised(comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16), seed=52)
    prefix = "transformer."
    return _half({key[len(prefix):]: value for key, value in encoder.state_dict().items() if key.startswith(prefix)})


def _placeholder():
    """Not a text encoder (T5-XXL, CLIP-G): one small tensor, so the file name exists for ComfyUI's file lists;
    loading it is not intended."""
    import torch

    return {"decoupled_ipadapter.placeholder": torch.zeros(1, dtype=torch.float16)}


def _flux_vae():
    """ae.safetensors: the 16-channel KL autoencoder without quant convs (the layout of FLUX.1's ae)."""
    import comfy.ldm.models.autoencoder

    ddconfig = {**SD_VAE, "z_channels": 16}
    vae = _randomised(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=16), seed=53)
    quant_convs = ("quant_conv.", "post_quant_conv.")
    return _half({key: value for key, value in vae.state_dict().items() if not key.startswith(quant_convs)})


def _xlabs_ipadapter():
    """An XLabs Flux IP-Adapter for the Flux stand-in: its width and double blocks, random values, fp16."""
    import pack_import  # noqa: F401  (tiny_flux builds it with the pack's own module)
    import tiny_flux
    import torch

    config = flux_standin_config()
    return tiny_flux.xlabs_adapter_state_dict(
        hidden_size=config["hidden_size"], double_blocks=config["depth"], seed=54, dtype=torch.float16
    )


def _instantx_flux_ipadapter():
    """An InstantX FLUX.1-dev IP-Adapter for the Flux stand-in (its width, 2 double and 1 single block), nested as
    the official `.bin`, random values, fp16."""
    import pack_import  # noqa: F401  (tiny_flux builds it with the pack's own module)
    import tiny_flux

    config = flux_standin_config()
    parts = tiny_flux.instantx_adapter_parts(hidden_size=config["hidden_size"], layers=config["depth"] + config["depth_single_blocks"], seed=56)
    return {part: _half(tensors) for part, tensors in parts.items()}


def _siglip_with_head():
    """SigLIP so400m at full size with a pooling head of so400m's shapes (16 heads, MLP 4304), random, fp16."""
    import pack_import  # noqa: F401  (the head is the pack's own module)

    from decoupled_ipadapter.models.siglip_head import SigLIPPoolingHead

    head = SigLIPPoolingHead(width=1152, heads=16, inner_dim=4304)
    return {**_clip_vision("clip_vision_siglip_384.json", seed=57), **_half(_randomised(head, seed=58).state_dict(), "vision_model.head.")}


def _sd3_checkpoint():
    """sd3.5_large.safetensors as ComfyUI saves an SD3 checkpoint without text encoders: the MMDiT
    (`model.diffusion_model.`) and the VAE (`first_stage_model.`), checked with ComfyUI's own detection."""
    import comfy.model_detection
    import comfy.supported_models
    import tiny_sd3

    model = tiny_sd3.tiny_sd3_model(tiny_sd3.tiny_sd3_config(blocks=SD3_JOINT_BLOCKS), seed=61).model
    weights = _half(_state_dict_for_saving(model, vae_state_dict=_flux_vae()))
    detected = comfy.model_detection.model_config_from_unet(weights, "model.diffusion_model.")
    if not isinstance(detected, comfy.supported_models.SD3) or detected.unet_config["depth"] != SD3_JOINT_BLOCKS:
        raise RuntimeError(f"standins: ComfyUI detects the SD3 stand-in as {type(detected).__name__}")
    return weights


def _instantx_ipadapter():
    """An InstantX SD3.5 IP-Adapter for the SD3 stand-in (its width and joint blocks), in the `.bin` layout of the
    official file (`image_proj` and `ip_adapter` parts), random values, fp16."""
    import pack_import  # noqa: F401  (tiny_sd3 builds it with the pack's own module)
    import tiny_models
    import tiny_sd3
    import torch

    flat = tiny_sd3.instantx_adapter_state_dict(hidden_size=SD3_JOINT_BLOCKS * tiny_sd3.SD3_HEAD_DIM,
                                                joint_blocks=SD3_JOINT_BLOCKS, seed=63, dtype=torch.float16)  # fmt: skip
    return tiny_models.nested(flat)


def _ipadapter(variant: str = "ip-adapter_sd15"):
    """An official adapter file: its keys and shapes (devkit/official_shapes.py), random values, fp16."""
    import official_shapes
    import pack_import  # noqa: F401  (official_shapes builds the tensors with the pack's own modules)

    return official_shapes.official_state_dict(official_shapes.VARIANTS[variant])


def _faceid(kind: str, base: str, *, seed: int):
    """An official-size FaceID file (devkit/tiny_models.faceid_adapter_state_dict): the real layer widths, the
    rank-128 LoRA of every attention layer, random values, fp16, in the nested .bin layout."""
    import pack_import  # noqa: F401  (the FaceID projections are the pack's own modules)
    import tiny_models
    import torch

    hidden, text = {"SD1.5": (tiny_models.SD15_HIDDEN_SIZES, 768), "SDXL": (tiny_models.SDXL_HIDDEN_SIZES, 2048)}[base]
    parts = tiny_models.faceid_adapter_state_dict(
        kind, hidden_sizes=hidden, text_width=text, seed=seed, lora_rank=128, lora=kind != "portrait"
    )
    return {part: {key: value.to(torch.float16) for key, value in tensors.items()} for part, tensors in parts.items()}


def _onnx(build_name: str):
    def write(path: Path) -> None:
        import tiny_insightface

        tiny_insightface.write_model(getattr(tiny_insightface, build_name), path)

    return write


def _controlnet():
    import comfy.cldm.cldm
    import torch

    config = {key: value for key, value in SD15_UNET.items() if key != "out_channels"}
    control = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float16, **config)
    return _half(_randomised(control, seed=6).state_dict(), "control_model.")


def _t2i_adapter():
    import comfy.t2i_adapter.adapter

    # Canny: one input channel, pixel-unshuffled by 8 -> 64 channels.
    adapter = comfy.t2i_adapter.adapter.Adapter(
        cin=64, channels=[320, 640, 1280, 1280], nums_rb=2, ksize=1, sk=True, use_conv=False, xl=False
    )
    return _half(_randomised(adapter, seed=7).state_dict())


def _sdxl_layout() -> dict:
    """Every tensor of an SDXL base checkpoint as ComfyUI saves one (UNet, both text encoders, VAE), on the meta
    device: names, shapes and dtypes without memory. Checked with ComfyUI's own detection."""
    import comfy.ldm.models.autoencoder
    import comfy.model_detection
    import comfy.sdxl_clip
    import comfy.supported_models
    import torch

    meta = torch.device("meta")
    model_config = comfy.supported_models.SDXL(dict(SDXL_UNET))
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({}, device=meta)
    with meta:
        text_encoders = comfy.sdxl_clip.SDXLClipModel(device=meta, dtype=torch.float16)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE), embed_dim=4)
    layout = _state_dict_for_saving(model, clip_state_dict=text_encoders.state_dict(), vae_state_dict=vae.state_dict())
    detected = comfy.model_detection.model_config_from_unet(layout, "model.diffusion_model.")
    if type(detected) is not comfy.supported_models.SDXL:
        raise RuntimeError(f"standins: ComfyUI detects the SDXL stand-in layout as {type(detected).__name__}")
    return layout


def _random_tensor(name: str, shape, *, seed: int):
    """fill_random_'s rule (devkit/tiny_models.py) for one named tensor, seeded by its name: the same values in any
    order."""
    import zlib

    import tiny_models
    import torch

    generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
    return tiny_models.random_parameter(name, shape, generator=generator).to(torch.float16)


def _write_streamed_safetensors(layout: dict, path: Path, *, seed: int) -> None:
    """A .safetensors file of random fp16 tensors written one tensor at a time: the header first (it only needs the
    shapes), then each tensor's bytes. Peak memory is one tensor, not the file."""
    import math

    import torch

    names = sorted(layout)
    header, offset = {"__metadata__": METADATA}, 0
    for name in names:
        size = 2 * math.prod(layout[name].shape)  # fp16
        header[name] = {"dtype": "F16", "shape": list(layout[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as file:
        file.write(len(encoded).to_bytes(8, "little") + encoded)
        for name in names:
            tensor = _random_tensor(name, tuple(layout[name].shape), seed=seed)
            file.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def _write_sdxl_checkpoint(path: Path) -> None:
    _write_streamed_safetensors(_sdxl_layout(), path, seed=31)


def _saved_safetensors(build):
    def write(path: Path) -> None:
        import safetensors.torch

        safetensors.torch.save_file(build(), str(path), metadata=METADATA)

    return write


def _saved_pth(build):
    """A torch.save'd state dict, as the official .pth ControlNet and T2I-Adapter files and InstantX's .bin are
    (ComfyUI and the pack read them with torch.load(weights_only=True)), and h94's FaceID .bin files."""

    def write(path: Path) -> None:
        import torch

        torch.save(build(), str(path))

    return write


WRITERS = {
    CHECKPOINT: _saved_safetensors(_checkpoint),
    CLIP_VISION: _saved_safetensors(_clip_vision),
    IPADAPTER: _saved_safetensors(_ipadapter),
    CONTROLNET: _saved_safetensors(_controlnet),
    T2I_ADAPTER: _saved_safetensors(_t2i_adapter),
    FINETUNE_CHECKPOINT: _saved_safetensors(lambda: _checkpoint(seed=41)),
    IPADAPTER_PLUS: _saved_safetensors(lambda: _ipadapter("ip-adapter-plus_sd15")),
    CONTROLNET_PTH: _saved_pth(_controlnet),
    T2I_ADAPTER_PTH: _saved_pth(_t2i_adapter),
    SDXL_CHECKPOINT: _write_sdxl_checkpoint,
    IPADAPTER_PLUS_SDXL: _saved_safetensors(lambda: _ipadapter("ip-adapter-plus_sdxl_vit-h")),
    FLUX_MODEL: _saved_safetensors(_flux_model),
    FLUX_CLIP_L: _saved_safetensors(_clip_l_text),
    FLUX_T5XXL: _saved_safetensors(_placeholder),
    FLUX_VAE: _saved_safetensors(_flux_vae),
    CLIP_VISION_L: _saved_safetensors(lambda: _clip_vision("clip_vision_config_vitl.json", seed=55)),
    XLABS_IPADAPTER: _saved_safetensors(_xlabs_ipadapter),
    SD3_CHECKPOINT: _saved_safetensors(_sd3_checkpoint),
    SD3_CLIP_G: _saved_safetensors(_placeholder),
    SIGLIP_VISION: _saved_safetensors(lambda: _clip_vision("clip_vision_siglip_384.json", seed=62)),
    INSTANTX_IPADAPTER: _saved_pth(_instantx_ipadapter),
    INSTANTX_FLUX_IPADAPTER: _saved_pth(_instantx_flux_ipadapter),
    SIGLIP_WITH_HEAD: _saved_safetensors(_siglip_with_head),
    FACEID_SD15: _saved_pth(lambda: _faceid("faceid", "SD1.5", seed=71)),
    FACEID_PLUSV2_SD15: _saved_pth(lambda: _faceid("plus", "SD1.5", seed=72)),
    FACEID_PORTRAIT_SD15: _saved_pth(lambda: _faceid("portrait", "SD1.5", seed=73)),
    FACEID_SDXL: _saved_pth(lambda: _faceid("faceid", "SDXL", seed=74)),
    INSIGHTFACE_DETECTOR: _onnx("detector_model"),
    INSIGHTFACE_RECOGNISER: _onnx("recogniser_model"),
}


def _remove_leftovers(directory: Path) -> None:
    """Half-written files of an interrupted run: ours (`*.partial-<pid>`) and safetensors' own (`.tmp*`)."""
    for folder in {directory} | {directory / Path(name).parent for name in ALL_FILES}:
        for path in folder.glob("*"):
            if path.is_file() and (".partial-" in path.name or path.name.startswith(".tmp")):
                path.unlink()


def generate(directory: Path, *, comfyui_dir: Path, groups=("demo",)) -> None:
    with _locked(directory):
        _remove_leftovers(directory)
        files = {name: size for name, size in _read_stamp(directory).items() if name in ALL_FILES}
        missing = [name for name in _names(groups) if not _is_recorded(directory, name, files)]
        if not missing:
            return
        _import_comfy(comfyui_dir)
        for name in missing:
            started = time.monotonic()
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
            WRITERS[name](partial)
            os.chmod(partial, 0o644)
            os.replace(partial, target)
            files[name] = target.stat().st_size
            _write_stamp(directory, files)
            print(f"[standins] {name}: {files[name] / 2**20:.0f} MiB in {time.monotonic() - started:.1f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=default_dir(), help="where to write them (default: %(default)s)")
    parser.add_argument("--groups", nargs="+", choices=sorted(GROUPS), default=["demo"],
                        help="which files: demo (default), workflows (the example workflows' other SD1.5 files), "
                        "sdxl (a full-size SDXL checkpoint, 6.9 GB, and its adapter), "
                        "flux (a FLUX.1-shaped transformer and the Flux workflow's other files, 2.7 GB), "
                        "sd3 (an SD3-detected MMDiT and the SD3.5 workflow's other files, 1.2 GB)")  # fmt: skip
    options = parser.parse_args(argv)
    if is_complete(options.dir, options.groups):
        print(f"[standins] ready in {options.dir}")
        return 0
    print(f"[standins] generating random stand-in models in {options.dir} (once; a minute or more)", flush=True)
    generate(options.dir, comfyui_dir=default_comfyui_dir(), groups=options.groups)
    print(f"[standins] ready in {options.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
