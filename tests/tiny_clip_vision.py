"""Tiny ComfyUI CLIP vision models with the real encoders' output widths, for the Encode node's tests.

`comfy.clip_vision.ClipVisionModel(json_path)` is built from a small config with the keys of ComfyUI's
comfy/clip_vision_config_h.json. What an adapter checks is kept real: the image-embeds width (`projection_dim`) and the
hidden-state width (`hidden_size`). The rest is made small: 2 layers (so the penultimate hidden states are layer 0's
output), a 64-wide MLP, 32 px images in 16 px patches (5 tokens: class + 2x2 patches). Weights are random
(tiny_models.fill_random_). ComfyUI computes in fp32 whatever the storage dtype; the weights are stored in fp32 by
default (as with --fp32-text-enc), which spares the per-call fp16 -> fp32 weight casts; pass `dtype=None` to keep
ComfyUI's CPU default (fp16 storage).
"""

import json
from pathlib import Path

import torch
from tiny_models import fill_random_

# (image_embeds width, hidden-state width) of the real encoders.
ENCODER_WIDTHS = {
    "ViT-H": dict(projection_dim=1024, hidden_size=1280),  # CLIP-ViT-H-14-laion2B-s32B-b79K
    "ViT-bigG": dict(projection_dim=1280, hidden_size=1664),  # CLIP-ViT-bigG-14-laion2B-39B-b160k
    "ViT-L": dict(projection_dim=768, hidden_size=1024),  # OpenAI CLIP ViT-L/14 (XLabs Flux IP-Adapter)
}
IMAGE_SIZE = 32
PATCH_SIZE = 16
LAYERS = 2
TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1


def tiny_clip_vision_config(encoder: str) -> dict:
    """A clip_vision_config_*.json-shaped dict with `encoder`'s widths and a tiny everything else."""
    widths = ENCODER_WIDTHS[encoder]
    return {
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": widths["hidden_size"],
        "image_size": IMAGE_SIZE,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_channels": 3,
        "num_hidden_layers": LAYERS,
        "patch_size": PATCH_SIZE,
        "projection_dim": widths["projection_dim"],
        "torch_dtype": "float32",
    }


def tiny_clip_vision(encoder: str, directory, *, seed: int = 0, dtype: torch.dtype | None = torch.float32):
    """A `comfy.clip_vision.ClipVisionModel` ("ViT-H"-like or "ViT-bigG"-like) with random weights.

    The JSON config is written to `directory` (a temporary folder), as ComfyUI's constructor reads a file path.
    """
    import comfy.clip_vision

    path = Path(directory) / f"tiny_clip_vision_{encoder}.json"
    path.write_text(json.dumps(tiny_clip_vision_config(encoder), indent=1))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(path))
    if dtype is not None:
        clip_vision.model.to(dtype)
        clip_vision.dtype = dtype
    fill_random_(clip_vision.model, seed=seed)
    return clip_vision


def tiny_siglip_vision(directory, *, seed: int = 0):
    """A SigLIP-like `comfy.clip_vision.ClipVisionModel` (model_type siglip_vision_model, as ComfyUI's
    clip_vision_siglip_384.json): so400m's hidden width 1152 and no image projection, the rest tiny, fp32."""
    import comfy.clip_vision

    config = {
        "num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "image_size": IMAGE_SIZE,
        "intermediate_size": 64, "model_type": "siglip_vision_model", "num_attention_heads": 16,
        "num_hidden_layers": LAYERS, "patch_size": PATCH_SIZE, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }  # fmt: skip
    path = Path(directory) / "tiny_siglip_vision.json"
    path.write_text(json.dumps(config, indent=1))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(path))
    clip_vision.model.to(torch.float32)
    clip_vision.dtype = torch.float32
    fill_random_(clip_vision.model, seed=seed)
    return clip_vision
