"""Tiny random CLIP models in the OpenCLIP format, and the same weights in the layout ComfyUI's CLIPVisionLoader reads.

`tiny_openclip_state_dict` builds open_clip's own CLIP (open_clip.CLIP, no pretrained tag: nothing is downloaded) from
a small config and fills it with random values, so the keys and shapes are exactly those of an
open_clip_pytorch_model.bin; `openclip_config` is the open_clip_config.json open_clip would save beside it.
`comfy_layout` maps its image tower with ComfyUI's own converter (comfy.clip_vision.convert_to_transformers, what
CLIPVisionLoader applies to an OpenCLIP file) and `comfy_clip_vision` loads that into a comfy.clip_vision.ClipVisionModel
built from the matching config. The text towers keep open_clip's 49408-token vocabulary: the tokenizer is open_clip's
bundled one.
"""

import json
import math
from pathlib import Path

import torch

TEXT = dict(context_length=16, vocab_size=49408, width=64, heads=1, layers=2)
# Widths no known model has: the loader reads them only with their open_clip_config.json beside the file.
SMALL = dict(embed_dim=48, vision=dict(layers=3, width=128, head_width=64, patch_size=8, image_size=32, mlp_ratio=2.0))
# Heads 32 wide in the image tower and 16 wide in the text tower: a 64-wide guess would be wrong in both.
CUSTOM = dict(
    embed_dim=40,
    vision=dict(layers=2, width=256, head_width=32, patch_size=8, image_size=32, mlp_ratio=2.0),
    text=dict(context_length=16, vocab_size=49408, width=96, heads=6, layers=2),
)
# The real ViT-H-14 widths (image embeds 1024, hidden states 1280, heads 80 wide), everything else tiny: a width the
# loader knows without a config, for the Encode node.
VIT_H_WIDTHS = dict(
    embed_dim=1024, vision=dict(layers=2, width=1280, head_width=80, patch_size=16, image_size=32, mlp_ratio=0.05)
)


def fill_openclip_random_(model: torch.nn.Module, *, seed: int) -> torch.nn.Module:
    """Fan-in-scaled matrices, LayerNorm weights near 1, small biases and embeddings: finite, varied activations."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("logit_scale"):
                parameter.fill_(math.log(100.0))
            elif parameter.dim() >= 2 and "embedding" not in name:
                parameter.copy_(noise / math.sqrt(math.prod(parameter.shape[1:])))
            elif ("ln_" in name or "norm" in name) and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(0.1 * noise if "bias" in name else 0.5 * noise)
    return model


def tiny_openclip(config: dict = SMALL, *, seed: int = 0, quick_gelu: bool = False):
    """open_clip's CLIP module (the oracle) with random weights."""
    import open_clip

    model = open_clip.CLIP(**openclip_config(config, quick_gelu=quick_gelu)["model_cfg"])
    return fill_openclip_random_(model.eval(), seed=seed)


def openclip_config(config: dict = SMALL, *, quick_gelu: bool = False, preprocess: dict | None = None) -> dict:
    """The open_clip_config.json open_clip saves beside the model's weights: its model_cfg and preprocess_cfg."""
    model_cfg = dict(
        embed_dim=config["embed_dim"], vision_cfg=config["vision"], text_cfg=config.get("text", TEXT), quick_gelu=quick_gelu
    )
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess or {}}


def tiny_openclip_state_dict(config: dict = SMALL, *, seed: int = 0, text: bool = True, dtype=torch.float32) -> dict:
    """The flat state dict an OpenCLIP file holds (`visual.*` and, with `text`, the text tower and logit_scale)."""
    state_dict = tiny_openclip(config, seed=seed).state_dict()
    return {
        key: value.to(dtype).contiguous()
        for key, value in state_dict.items()
        if text or key.startswith("visual.")
    }


def save_openclip(state_dict: dict, path: Path, *, config: dict | None = None) -> Path:
    """Writes the state dict as OpenCLIP does: .safetensors, or a torch pickle (.bin); with `config`, writes it as
    open_clip_config.json in the same folder."""
    if config is not None:
        (path.parent / "open_clip_config.json").write_text(json.dumps(config))
    state_dict = {key: value.contiguous() for key, value in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    return path


def comfy_layout(state_dict: dict) -> dict:
    """The image tower in the transformers layout ComfyUI's CLIP vision model reads, by ComfyUI's own converter."""
    import comfy.clip_vision

    visual = {key: value.clone() for key, value in state_dict.items() if key.startswith("visual.")}
    return comfy.clip_vision.convert_to_transformers(visual, "visual.")


def comfy_clip_vision(state_dict: dict, config: dict, directory: Path):
    """A comfy.clip_vision.ClipVisionModel (fp32) holding the same image tower."""
    import comfy.clip_vision

    vision = config["vision"]
    json_config = {
        "hidden_act": "gelu",
        "hidden_size": vision["width"],
        "image_size": vision["image_size"],
        "intermediate_size": int(vision["width"] * vision["mlp_ratio"]),
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": vision["width"] // vision["head_width"],
        "num_channels": 3,
        "num_hidden_layers": vision["layers"],
        "patch_size": vision["patch_size"],
        "projection_dim": config["embed_dim"],
    }
    path = Path(directory) / f"comfy_clip_vision_{vision['width']}.json"
    path.write_text(json.dumps(json_config))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(path))
    clip_vision.model.to(torch.float32)
    clip_vision.dtype = torch.float32
    missing, _ = clip_vision.load_sd(comfy_layout(state_dict))
    assert not missing, f"ComfyUI's CLIP vision model did not get {missing}"
    return clip_vision
