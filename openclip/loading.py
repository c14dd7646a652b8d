"""CLIP models saved in the OpenCLIP format, rebuilt with open_clip_torch from the file's tensors alone.

An OpenCLIP file (`open_clip_pytorch_model.bin`, `open_clip_model.safetensors`) holds one flat state dict: the image
tower under `visual.` (`conv1`, `class_embedding`, `positional_embedding`, `ln_pre`, `transformer.resblocks.N`,
`ln_post`, `proj`) and, in a full CLIP model, the text tower at the top level (`token_embedding`,
`positional_embedding`, `transformer.resblocks.N`, `ln_final`, `text_projection`) plus `logit_scale`.

Everything the towers' constructors need is read from the tensors' shapes, except two things a state dict does not
record: the vision heads (the known models' head widths; 64 otherwise, which is also the text towers' rule) and the
activation (GELU, or QuickGELU for OpenAI's weights; see `quick_gelu_of`). The towers are built on the meta device
and take the file's tensors (`load_state_dict(assign=True, strict=True)`), so nothing is randomly initialised and a
tensor the architecture does not expect is an error. open_clip is only used as a library: no pretrained tag, no hub.
"""

import json
import os
import re
from dataclasses import dataclass

import torch

from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.formats import StateDict, WeightsFileKind, assign_weights, read_weights_file

VISION_PREFIX = "visual."
TEXT_HEAD_WIDTH = 64
DEFAULT_VISION_HEAD_WIDTH = 64
QUICK_GELU_NAME_HINTS = ("openai", "quickgelu", "quick_gelu")
CONFIG_FILE_NAME = "open_clip_config.json"
ACTIVATIONS = ("auto", "gelu", "quick_gelu")
OPENCLIP_FILE = WeightsFileKind(
    label="OpenCLIP file",
    where_to_put="Put open_clip_pytorch_model.bin or open_clip_model.safetensors in ComfyUI's models/clip_vision folder "
    "(or fix the name), then refresh the node list.",
    what_to_use="Use the model's open_clip_model.safetensors.",
)


@dataclass(frozen=True)
class KnownModel:
    name: str
    vision_width: int
    vision_layers: int
    patch_size: int
    image_size: int
    embed_dim: int
    vision_head_width: int


# OpenCLIP's own configs (open_clip/model_configs/*.json) of the encoders IP-Adapter and the paper's scores use.
KNOWN_MODELS = (
    KnownModel("ViT-H-14", 1280, 32, 14, 224, 1024, 80),
    KnownModel("ViT-bigG-14", 1664, 48, 14, 224, 1280, 104),
    KnownModel("ViT-L-14", 1024, 24, 14, 224, 768, 64),
    KnownModel("ViT-L-14-336", 1024, 24, 14, 336, 768, 64),
    KnownModel("ViT-B-16", 768, 12, 16, 224, 512, 64),
    KnownModel("ViT-B-32", 768, 12, 32, 224, 512, 64),
)


@dataclass(frozen=True)
class OpenCLIPArchitecture:
    """What open_clip needs to rebuild a model, as read from a state dict."""

    name: str  # a KnownModel name, or "custom ViT"
    embed_dim: int
    vision: dict  # open_clip.CLIPVisionCfg fields
    text: dict | None  # open_clip.CLIPTextCfg fields; None for an image tower alone
    quick_gelu: bool

    @property
    def image_size(self) -> int:
        return self.vision["image_size"]

    def describe(self) -> str:
        vision = self.vision
        heads = vision["width"] // vision["head_width"]
        text = (
            f"text tower {self.text['layers']} layers x {self.text['width']}" if self.text is not None else "no text tower"
        )
        activation = "QuickGELU" if self.quick_gelu else "GELU"
        return (
            f"OpenCLIP {self.name} (image tower {vision['layers']} layers x {vision['width']}, {heads} heads, "
            f"patch {vision['patch_size']}, {vision['image_size']} px; embeds {self.embed_dim}; {text}; {activation})"
        )


def read_openclip_file(path: str) -> StateDict:
    """The flat state dict of an OpenCLIP file (`.safetensors`, or a torch pickle read with weights_only=True)."""
    return unwrap_state_dict(read_weights_file(path, kind=OPENCLIP_FILE), os.path.basename(path))


def unwrap_state_dict(content, name: str) -> StateDict:
    """Training checkpoints nest the weights under `state_dict` and prefix them with `module.`; both are undone."""
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict):
        raise IPAdapterError(
            f"'{name}' is not an OpenCLIP model: it holds a {type(content).__name__}, not a dict of weights. "
            "Use open_clip_pytorch_model.bin or open_clip_model.safetensors from the model's repository."
        )
    tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    if tensors and all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors


def layer_count(state_dict: StateDict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def architecture_of(state_dict: StateDict, name: str, *, quick_gelu: bool) -> OpenCLIPArchitecture:
    """Recognise an OpenCLIP ViT from its tensors; refuse what is not one, saying what the file is and what to do."""
    check_is_openclip_vit(state_dict, name)
    patch_weight = state_dict["visual.conv1.weight"]  # [width, 3, patch, patch]
    vision_width, patch_size = patch_weight.shape[0], patch_weight.shape[-1]
    grid_tokens = state_dict["visual.positional_embedding"].shape[0] - 1  # class token + grid x grid patches
    grid = round(grid_tokens**0.5)
    if grid * grid != grid_tokens:
        raise IPAdapterError(f"'{name}': the image tower's {grid_tokens} position embeddings are not a square grid; "
                             "only square OpenCLIP ViTs are supported.")
    vision_layers = layer_count(state_dict, VISION_PREFIX)
    embed_dim = state_dict["visual.proj"].shape[1]  # [width, embed_dim]
    image_size = grid * patch_size
    known = next(
        (
            model
            for model in KNOWN_MODELS
            if (model.vision_width, model.vision_layers, model.patch_size, model.image_size, model.embed_dim)
            == (vision_width, vision_layers, patch_size, image_size, embed_dim)
        ),
        None,
    )
    vision_head_width = known.vision_head_width if known else DEFAULT_VISION_HEAD_WIDTH
    if vision_width % vision_head_width:
        raise IPAdapterError(
            f"'{name}': an image tower {vision_width} wide cannot be split into heads {vision_head_width} wide; "
            "this OpenCLIP model is not one this loader knows (ViT-H-14, ViT-bigG-14, ViT-L-14, ViT-B)."
        )
    mlp_width = state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]  # [mlp_width, width]
    vision = dict(
        layers=vision_layers,
        width=vision_width,
        head_width=vision_head_width,
        mlp_ratio=mlp_width / vision_width,
        patch_size=patch_size,
        image_size=image_size,
    )
    text = text_config_of(state_dict, name, embed_dim=embed_dim)
    return OpenCLIPArchitecture(
        name=known.name if known else "custom ViT", embed_dim=embed_dim, vision=vision, text=text, quick_gelu=quick_gelu
    )


def check_is_openclip_vit(state_dict: StateDict, name: str) -> None:
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
    raise IPAdapterError(
        f"'{name}' is {what}. This node reads OpenCLIP image encoders (open_clip_pytorch_model.bin or "
        "open_clip_model.safetensors of ViT-H-14, ViT-bigG-14, ViT-L-14)."
    )


def text_config_of(state_dict: StateDict, name: str, *, embed_dim: int) -> dict | None:
    """The text tower's CLIPTextCfg fields, or None when the file holds the image tower alone."""
    if "token_embedding.weight" not in state_dict or "text_projection" not in state_dict:
        return None
    vocab_size, width = state_dict["token_embedding.weight"].shape  # [vocab, width]
    text_embed_dim = state_dict["text_projection"].shape[-1]  # [width, embed_dim]
    if text_embed_dim != embed_dim:
        raise IPAdapterError(
            f"'{name}': the image tower's embeddings are {embed_dim} wide but the text tower's are {text_embed_dim}: "
            "the two towers do not belong to one CLIP model. Use the model's original OpenCLIP file."
        )
    mlp_width = state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]  # [mlp_width, width]
    return dict(
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=vocab_size,
        width=width,
        heads=width // TEXT_HEAD_WIDTH,
        layers=layer_count(state_dict, ""),
        mlp_ratio=mlp_width / width,
    )


def quick_gelu_of(path: str, activation: str) -> bool:
    """QuickGELU or GELU: a state dict does not say. `auto` reads open_clip_config.json beside the file when there
    is one, else takes QuickGELU for a file or folder name that says openai/quickgelu (OpenAI's weights), else GELU
    (LAION's ViT-H-14 and ViT-bigG-14)."""
    if activation not in ACTIVATIONS:
        raise IPAdapterError(f"activation must be one of {', '.join(ACTIVATIONS)}, not '{activation}'.")
    if activation != "auto":
        return activation == "quick_gelu"
    config_path = os.path.join(os.path.dirname(path), CONFIG_FILE_NAME)
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as file:
                model_config = json.load(file).get("model_cfg", {})
        except (OSError, ValueError, AttributeError) as error:
            raise IPAdapterError(f"'{config_path}' cannot be read as OpenCLIP's config ({error}). Fix or remove it.") from error
        return bool(model_config.get("quick_gelu", False))
    named = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)).lower()
    return any(hint in named for hint in QUICK_GELU_NAME_HINTS)


def build_towers(architecture: OpenCLIPArchitecture, state_dict: StateDict, name: str, *, with_text: bool, dtype: torch.dtype):
    """(image tower, text tower or None): open_clip's own modules, built on the meta device, holding the file's tensors.

    They are made by the functions `open_clip.CLIP` builds its towers with, so they are the modules open_clip itself
    would make for this config. The text tower's keys are the CLIP model's top-level text keys unchanged.
    """
    open_clip_model = import_open_clip("model")
    CLIPVisionCfg, CLIPTextCfg = open_clip_model.CLIPVisionCfg, open_clip_model.CLIPTextCfg
    _build_vision_tower, _build_text_tower = open_clip_model._build_vision_tower, open_clip_model._build_text_tower

    with torch.device("meta"):
        vision = _build_vision_tower(
            architecture.embed_dim, CLIPVisionCfg(**architecture.vision), quick_gelu=architecture.quick_gelu
        )
    vision_weights = {
        key[len(VISION_PREFIX) :]: value.to(dtype) for key, value in state_dict.items() if key.startswith(VISION_PREFIX)
    }
    _load_into(vision, vision_weights, name, "image tower")
    if not with_text or architecture.text is None:
        return vision, None
    with torch.device("meta"):
        text = _build_text_tower(architecture.embed_dim, CLIPTextCfg(**architecture.text), quick_gelu=architecture.quick_gelu)
    text_keys = set(text.state_dict())
    _load_into(text, {key: value.to(dtype) for key, value in state_dict.items() if key in text_keys}, name, "text tower")
    text.attn_mask = text.build_causal_mask()  # a non-persistent buffer: made on the meta device, not in the file
    return vision, text


def import_open_clip(submodule: str):
    """`open_clip.<submodule>`, or an error that says how to install it (it is in the pack's requirements.txt)."""
    import importlib

    try:
        return importlib.import_module(f"open_clip.{submodule}")
    except ImportError as error:
        raise IPAdapterError(
            f"The OpenCLIP nodes need the open_clip_torch package ({error}). Install the pack's requirements into "
            "ComfyUI's Python: python -m pip install -r custom_nodes/<this pack>/requirements.txt"
        ) from error


def _load_into(module: torch.nn.Module, weights: StateDict, name: str, tower: str) -> None:
    assign_weights(
        module,
        weights,
        mismatch=f"'{name}': its {tower} does not fit the OpenCLIP architecture read from its tensors",
        fix="This OpenCLIP variant is not supported; use ViT-H-14, ViT-bigG-14 or ViT-L-14.",
    )
