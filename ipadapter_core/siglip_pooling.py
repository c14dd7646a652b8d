"""SigLIP's pooled output, which the InstantX FLUX.1-dev IP-Adapter reads: the attention-pooling head of the
encoder file (`vision_model.head.*`), read from the file itself (weights only), on ComfyUI's post-layernorm tokens.

ComfyUI's CLIP vision loader drops the head, and the file Comfy-Org ships for SD3.5 and Redux
(`sigclip_vision_patch14_384.safetensors`) has none; google's `model.safetensors` of siglip-so400m-patch14-384 has
it. The SigLIP loader of this pack (`nodes/siglip_loader.py`) loads the encoder with ComfyUI and keeps the head on
the CLIP vision object it returns (`POOLING_HEAD_ATTRIBUTE`).
"""

import os

import safetensors
import torch

from ..models.siglip_head import SigLIPPoolingHead
from .errors import IPAdapterError
from .formats import assign_weights

HEAD_PREFIX = "vision_model.head."
POOLING_HEAD_ATTRIBUTE = "decoupled_ipadapter_pooling_head"
SIGLIP_WITH_HEAD_FILE = (
    "siglip-so400m-patch14-384.safetensors (model.safetensors of google/siglip-so400m-patch14-384, which keeps the "
    "pooling head)"
)
LOADER_NAME = "Load SigLIP Vision (pooled)"


def head_keys(path: str) -> list[str]:
    """The `vision_model.head.*` keys of a safetensors file, read from its header only; IPAdapterError for a file
    that is not safetensors or cannot be read."""
    name = os.path.basename(path)
    try:
        with safetensors.safe_open(path, framework="pt") as file:
            return [key for key in file.keys() if key.startswith(HEAD_PREFIX)]
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise IPAdapterError(
            f"'{name}' cannot be read as a safetensors SigLIP file ({error}). Use {SIGLIP_WITH_HEAD_FILE}."
        ) from error


def check_has_pooling_head(path: str) -> None:
    """Refuse a SigLIP file without the attention-pooling head, naming one that has it."""
    if not head_keys(path):
        raise IPAdapterError(
            f"'{os.path.basename(path)}' has no SigLIP attention-pooling head (vision_model.head.*), whose pooled "
            "output the InstantX FLUX.1-dev IP-Adapter reads (Comfy-Org's sigclip_vision_patch14_384.safetensors "
            f"for SD3.5 and Redux has none). Put {SIGLIP_WITH_HEAD_FILE} in models/clip_vision and pick it here."
        )


def load_pooling_head(path: str, *, heads: int) -> SigLIPPoolingHead:
    """The file's pooling head as a module (fp32, eval), its weights read as weights only."""
    check_has_pooling_head(path)
    with safetensors.safe_open(path, framework="pt") as file:
        weights = {key[len(HEAD_PREFIX) :]: file.get_tensor(key).float() for key in head_keys(path)}
    width = weights["probe"].shape[-1] if "probe" in weights else 0
    inner_dim = weights["mlp.fc1.weight"].shape[0] if "mlp.fc1.weight" in weights else 0
    with torch.device("meta"):
        head = SigLIPPoolingHead(width=width, heads=heads, inner_dim=inner_dim)
    name = os.path.basename(path)
    assign_weights(
        head, weights, mismatch=f"'{name}' has a SigLIP pooling head that does not fit SigLIP's layout",
        fix=f"The file may be damaged; use {SIGLIP_WITH_HEAD_FILE}.",
    )  # fmt: skip
    return head.eval().requires_grad_(False)


def encoder_heads(clip_vision) -> int:
    """The attention heads of a ComfyUI SigLIP encoder (its head's MultiheadAttention has as many)."""
    return clip_vision.model.vision_model.encoder.layers[0].self_attn.heads


def with_pooling_head(clip_vision, path: str):
    """The ComfyUI CLIP vision object `clip_vision`, loaded from `path`, keeping that file's pooling head."""
    setattr(clip_vision, POOLING_HEAD_ATTRIBUTE, load_pooling_head(path, heads=encoder_heads(clip_vision)))
    return clip_vision


def pooled_output(clip_vision, tokens: torch.Tensor) -> torch.Tensor:
    """SigLIP's pooled output `[B, W]` of its post-layernorm tokens `[B, S, W]`, in fp32 on the tokens' device."""
    head = getattr(clip_vision, POOLING_HEAD_ATTRIBUTE, None)
    if head is None:
        raise IPAdapterError(
            "The InstantX FLUX.1-dev IP-Adapter reads SigLIP's pooled output, whose attention-pooling head ComfyUI's "
            f"Load CLIP Vision drops. Load the encoder with {LOADER_NAME} (this pack's node) and "
            f"{SIGLIP_WITH_HEAD_FILE}."
        )
    with torch.no_grad():
        return head.to(tokens.device)(tokens.float())
