"""What an OpenCLIP ViT's tensors say about its architecture, and what they cannot say.

An OpenCLIP file holds one flat state dict: the image tower under `visual.` (`conv1`, `class_embedding`,
`positional_embedding`, `ln_pre`, `transformer.resblocks.N`, `ln_post`, `proj`) and, in a full CLIP model, the text
tower at the top level (`token_embedding`, `positional_embedding`, `transformer.resblocks.N`, `ln_final`,
`text_projection`) plus `logit_scale`. The shapes give every width, the layer counts, the patch and image size and
the MLP widths. They do not give the number of attention heads (`in_proj_weight` is [3 x width, width] whatever it
is), the activation, the pooling or the preprocessing: those come from open_clip_config.json or from a known model.
"""

import re
from dataclasses import dataclass

from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.formats import StateDict

VISION_PREFIX = "visual."
ACCEPTED_FILES = "open_clip_pytorch_model.bin or open_clip_model.safetensors"


@dataclass(frozen=True)
class TowerShapes:
    """One tower as its tensors give it; `evidence` names the tensor each value is read from, for error messages."""

    width: int
    layers: int
    mlp_width: int
    evidence: dict  # field -> "visual.conv1.weight [128, 3, 8, 8]"
    patch_size: int | None = None  # image tower
    image_size: int | None = None  # image tower
    context_length: int | None = None  # text tower
    vocab_size: int | None = None  # text tower


@dataclass(frozen=True)
class ModelShapes:
    embed_dim: int
    vision: TowerShapes
    text: TowerShapes | None  # None: the file holds the image tower alone


def described(state_dict: StateDict, key: str) -> str:
    return f"{key} {list(state_dict[key].shape)}"


def shape_of(state_dict: StateDict, key: str, name: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise IPAdapterError(
            f"'{name}' has no tensor {key}: it is not a complete OpenCLIP model. Use the model's original file."
        )
    return tuple(state_dict[key].shape)


def layer_count(state_dict: StateDict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def check_is_openclip_vit(state_dict: StateDict, name: str, accepted: str) -> None:
    """Refuse what is not an OpenCLIP ViT, saying what the file is and what to do; `accepted` lists what is read."""
    required = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "visual.class_embedding")
    if all(key in state_dict for key in required) and layer_count(state_dict, VISION_PREFIX) > 0:
        return
    if any(key.startswith("vision_model.") for key in state_dict):
        what = "a CLIP vision model in the transformers layout: load it with ComfyUI's Load CLIP Vision node instead"
    elif any(key.startswith("visual.trunk.") for key in state_dict):
        what = "an OpenCLIP model with a timm image tower, which this loader does not support"
    elif any(key.startswith(("image_proj", "ip_adapter")) for key in state_dict):
        what = "an IP-Adapter file: load it with Load IPAdapter"
    else:
        found = ", ".join(sorted({key.split(".")[0] for key in state_dict})[:6]) or "nothing"
        what = f"not an OpenCLIP ViT (found: {found})"
    raise IPAdapterError(f"'{name}' is {what}. This node reads OpenCLIP ViT image encoders ({ACCEPTED_FILES}): {accepted}.")


def model_shapes(state_dict: StateDict, name: str, *, with_text: bool) -> ModelShapes:
    """The shapes of an OpenCLIP ViT (checked with `check_is_openclip_vit` first); the text tower's only `with_text`."""
    patch_key, position_key, projection_key = "visual.conv1.weight", "visual.positional_embedding", "visual.proj"
    vision_width, _, _, patch_size = state_dict[patch_key].shape  # [width, 3, patch, patch]
    grid_tokens = state_dict[position_key].shape[0] - 1  # class token + grid x grid patches
    grid = round(grid_tokens**0.5)
    if grid * grid != grid_tokens:
        raise IPAdapterError(
            f"'{name}': the image tower's {grid_tokens} position embeddings are not a square grid; "
            "only square OpenCLIP ViTs are supported."
        )
    mlp_key = "visual.transformer.resblocks.0.mlp.c_fc.weight"  # [mlp_width, width]
    vision = TowerShapes(
        width=vision_width,
        layers=layer_count(state_dict, VISION_PREFIX),
        mlp_width=shape_of(state_dict, mlp_key, name)[0],
        patch_size=patch_size,
        image_size=grid * patch_size,
        evidence={
            "width": described(state_dict, patch_key),
            "patch_size": described(state_dict, patch_key),
            "image_size": f"{described(state_dict, position_key)}: {grid} x {grid} patches of {patch_size} px",
            "layers": f"visual.transformer.resblocks.0-{layer_count(state_dict, VISION_PREFIX) - 1}",
            "mlp_width": described(state_dict, mlp_key),
            "embed_dim": described(state_dict, projection_key),
        },
    )
    embed_dim = state_dict[projection_key].shape[1]  # [width, embed_dim]
    text = text_shapes(state_dict, name, embed_dim=embed_dim) if with_text else None
    return ModelShapes(embed_dim=embed_dim, vision=vision, text=text)


def text_shapes(state_dict: StateDict, name: str, *, embed_dim: int) -> TowerShapes | None:
    """The text tower's shapes, or None when the file holds the image tower alone."""
    token_key, projection_key, position_key = "token_embedding.weight", "text_projection", "positional_embedding"
    if token_key not in state_dict or projection_key not in state_dict:
        return None
    vocab_size, width = state_dict[token_key].shape  # [vocab, width]
    text_embed_dim = state_dict[projection_key].shape[-1]  # [width, embed_dim]
    if text_embed_dim != embed_dim:
        raise IPAdapterError(
            f"'{name}': the image tower's embeddings are {embed_dim} wide but the text tower's are {text_embed_dim}: "
            "the two towers do not belong to one CLIP model. Use the model's original OpenCLIP file."
        )
    mlp_key = "transformer.resblocks.0.mlp.c_fc.weight"  # [mlp_width, width]
    return TowerShapes(
        width=width,
        layers=layer_count(state_dict, ""),
        mlp_width=shape_of(state_dict, mlp_key, name)[0],
        context_length=shape_of(state_dict, position_key, name)[0],
        vocab_size=vocab_size,
        evidence={
            "width": described(state_dict, token_key),
            "vocab_size": described(state_dict, token_key),
            "context_length": described(state_dict, position_key),
            "layers": f"transformer.resblocks.0-{layer_count(state_dict, '') - 1}",
            "mlp_width": described(state_dict, mlp_key),
        },
    )
