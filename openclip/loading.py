"""CLIP models saved in the OpenCLIP format, rebuilt with open_clip_torch from the file's tensors and, where there is
one, the open_clip_config.json beside it.

The tensors give every shape but not the attention heads, the activation, the pooling or the preprocessing
(tensors.py). With a config, those are the config's, and the config's shapes are checked against the tensors
(config.py). Without one, a tower is read only if its width is that of a known model's tower (ViT-H-14, ViT-bigG-14,
ViT-L-14, ViT-B), which fixes its head width as in every open_clip config of that width; any other width is refused,
saying which config to put beside the file: heads are never guessed. The activation is then `activation` (see
`quick_gelu_of`), the pooling open_clip's default (the class token) and the preprocessing OpenAI's.

The towers are built on the meta device by open_clip's own constructors and take the file's tensors
(`load_state_dict(assign=True, strict=True)`), so nothing is randomly initialised and a tensor the architecture does
not expect is an error. open_clip is only used as a library: no pretrained tag, no hub.
"""

import math
import os
from dataclasses import dataclass

import torch

from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.formats import StateDict, WeightsFileKind, assign_weights, read_weights_file
from .config import CONFIG_FILE_NAME, OpenCLIPConfig, tower_configs_from_config
from .library import import_open_clip
from .preprocessing import OPENAI_PREPROCESSING, Preprocessing, preprocessing_of
from .tensors import ACCEPTED_FILES, VISION_PREFIX, ModelShapes, check_is_openclip_vit, model_shapes

QUICK_GELU_NAME_HINTS = ("openai", "quickgelu", "quick_gelu")
ACTIVATIONS = ("auto", "gelu", "quick_gelu")
OPENCLIP_FILE = WeightsFileKind(
    label="OpenCLIP file",
    where_to_put=f"Put {ACCEPTED_FILES} in ComfyUI's models/clip_vision folder (or fix the name), then refresh the "
    "node list.",
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
    text_width: int
    text_heads: int


# OpenCLIP's own configs (open_clip/model_configs/*.json) of the encoders IP-Adapter and the paper's scores use.
KNOWN_MODELS = (
    KnownModel("ViT-H-14", 1280, 32, 14, 224, 1024, 80, 1024, 16),
    KnownModel("ViT-bigG-14", 1664, 48, 14, 224, 1280, 104, 1280, 20),
    KnownModel("ViT-L-14", 1024, 24, 14, 224, 768, 64, 768, 12),
    KnownModel("ViT-L-14-336", 1024, 24, 14, 336, 768, 64, 768, 12),
    KnownModel("ViT-B-16", 768, 12, 16, 224, 512, 64, 512, 8),
    KnownModel("ViT-B-32", 768, 12, 32, 224, 512, 64, 512, 8),
)
# Tower width -> its heads, read without a config: in open_clip's configs a tower of one of these widths always has
# these heads (tests/test_openclip.py checks every bundled config).
VISION_HEAD_WIDTHS = {model.vision_width: model.vision_head_width for model in KNOWN_MODELS}
TEXT_HEADS = {model.text_width: model.text_heads for model in KNOWN_MODELS}
ACCEPTED_MODELS = (
    "ViT-H-14, ViT-bigG-14, ViT-L-14 and ViT-B (and ViTs of their widths) from the tensors alone, any other OpenCLIP "
    f"ViT with its {CONFIG_FILE_NAME} beside the file"
)


@dataclass(frozen=True)
class OpenCLIPArchitecture:
    """What open_clip needs to rebuild a model and to preprocess its images."""

    name: str  # a KnownModel name, or "custom ViT"
    embed_dim: int
    vision: dict  # open_clip.CLIPVisionCfg fields
    text: dict | None  # open_clip.CLIPTextCfg fields; None for an image tower alone, or when it is not read
    quick_gelu: bool
    preprocessing: Preprocessing
    config_path: str | None  # the open_clip_config.json it was read with
    text_read: bool = True  # False: the text tower, if any, was left unread (the CLIP vision loader)

    @property
    def image_size(self) -> int:
        return self.vision["image_size"]

    def describe(self) -> str:
        vision, text = self.vision, self.text
        pooling = vision.get("pool_type", "tok")
        if text is not None:
            text_part = f"text tower {text['layers']} layers x {text['width']}, {text['heads']} heads"
        else:
            text_part = "no text tower" if self.text_read else "text tower not read"
        source = f"{CONFIG_FILE_NAME} checked against the tensors" if self.config_path else "the tensors"
        return (
            f"OpenCLIP {self.name} (image tower {vision['layers']} layers x {vision['width']}, "
            f"{vision['width'] // vision['head_width']} heads, patch {vision['patch_size']}, {vision['image_size']} px"
            f"{'' if pooling == 'tok' else f', {pooling} pooling'}; embeds {self.embed_dim}; {text_part}; "
            f"{'QuickGELU' if self.quick_gelu else 'GELU'}; from {source}; {self.preprocessing.describe()})"
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
            f"Use {ACCEPTED_FILES} from the model's repository."
        )
    tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    if tensors and all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors


def architecture_of(
    state_dict: StateDict, name: str, *, quick_gelu: bool, config: OpenCLIPConfig | None = None, with_text: bool = True
) -> OpenCLIPArchitecture:
    """Recognise an OpenCLIP ViT from its tensors and its config (None: the tensors alone); refuse what is not one,
    or what cannot be rebuilt without doubt, saying what to do. `with_text=False` leaves the text tower unread."""
    check_is_openclip_vit(state_dict, name, ACCEPTED_MODELS)
    shapes = model_shapes(state_dict, name, with_text=with_text)
    if config is None:
        vision, text = tower_configs_from_tensors(shapes, name)
        preprocessing = OPENAI_PREPROCESSING
    else:
        vision, text = tower_configs_from_config(config, shapes, name)
        preprocessing = preprocessing_of(config.preprocess, f"'{config.path}'")
    return OpenCLIPArchitecture(
        name=known_model_name(shapes),
        embed_dim=shapes.embed_dim,
        vision=vision,
        text=text,
        quick_gelu=quick_gelu,
        preprocessing=preprocessing,
        config_path=None if config is None else config.path,
        text_read=with_text,
    )


def known_model_name(shapes: ModelShapes) -> str:
    vision = shapes.vision
    found = (vision.width, vision.layers, vision.patch_size, vision.image_size, shapes.embed_dim)
    for model in KNOWN_MODELS:
        if (model.vision_width, model.vision_layers, model.patch_size, model.image_size, model.embed_dim) == found:
            return model.name
    return "custom ViT"


def tower_configs_from_tensors(shapes: ModelShapes, name: str) -> tuple[dict, dict | None]:
    """(CLIPVisionCfg fields, CLIPTextCfg fields or None) of a model without a config: only towers of known widths."""
    vision, text = shapes.vision, shapes.text
    head_width = VISION_HEAD_WIDTHS.get(vision.width)
    text_heads = None if text is None else TEXT_HEADS.get(text.width)
    if head_width is None or (text is not None and text_heads is None):
        raise IPAdapterError(config_needed_message(shapes, name))
    vision_fields = dict(
        layers=vision.layers,
        width=vision.width,
        head_width=head_width,
        mlp_ratio=mlp_ratio_of(vision.mlp_width, vision.width),
        patch_size=vision.patch_size,
        image_size=vision.image_size,
    )
    if text is None:
        return vision_fields, None
    text_fields = dict(
        context_length=text.context_length,
        vocab_size=text.vocab_size,
        width=text.width,
        heads=text_heads,
        layers=text.layers,
        mlp_ratio=mlp_ratio_of(text.mlp_width, text.width),
    )
    return vision_fields, text_fields


def mlp_ratio_of(mlp_width: int, width: int) -> float:
    """The mlp_ratio for which open_clip's `int(width * mlp_ratio)` is `mlp_width` (the quotient, nudged up when it
    rounds just below)."""
    ratio = mlp_width / width
    return ratio if int(width * ratio) == mlp_width else math.nextafter(ratio, math.inf)


def config_needed_message(shapes: ModelShapes, name: str) -> str:
    vision, text = shapes.vision, shapes.text
    needed = (
        f'{{"model_cfg": {{"embed_dim": {shapes.embed_dim}, "vision_cfg": {{"width": {vision.width}, "layers": '
        f'{vision.layers}, "head_width": <width of one attention head>, "patch_size": {vision.patch_size}, '
        f'"image_size": {vision.image_size}, "mlp_ratio": {vision.mlp_width / vision.width:g}}}'
    )
    if text is not None:
        needed += (
            f', "text_cfg": {{"width": {text.width}, "heads": <number of attention heads>, "layers": {text.layers}, '
            f'"context_length": {text.context_length}, "vocab_size": {text.vocab_size}, "mlp_ratio": '
            f"{text.mlp_width / text.width:g}}}"
        )
    needed += "}}"
    unknown = [f"an image tower {vision.width} wide"] if vision.width not in VISION_HEAD_WIDTHS else []
    if text is not None and text.width not in TEXT_HEADS:
        unknown.append(f"a text tower {text.width} wide")
    return (
        f"'{name}' is an OpenCLIP ViT with {' and '.join(unknown)}: no model this loader knows has "
        f"{'that width' if len(unknown) == 1 else 'those widths'}, and the tensors do not record how many attention "
        f"heads a tower has, so they are not guessed. Put the model's {CONFIG_FILE_NAME} (open_clip saves it beside "
        f"the weights; the model's repository has it) in the folder of '{name}'. It must hold {needed}, plus "
        "quick_gelu, vision_cfg.pool_type and preprocess_cfg where the model has its own. Without a config this "
        f"loader reads {', '.join(model.name for model in KNOWN_MODELS)} and ViTs of their widths."
    )


def quick_gelu_of(path: str, activation: str, config: OpenCLIPConfig | None) -> bool:
    """QuickGELU or GELU: a state dict does not say. `auto` takes the config's `quick_gelu` when there is a config,
    else QuickGELU for a file or folder name that says openai/quickgelu (OpenAI's weights), else GELU (LAION's
    ViT-H-14 and ViT-bigG-14)."""
    if activation not in ACTIVATIONS:
        raise IPAdapterError(f"activation must be one of {', '.join(ACTIVATIONS)}, not '{activation}'.")
    if activation != "auto":
        return activation == "quick_gelu"
    if config is not None:
        return bool(config.model.get("quick_gelu", False))
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
    if text.attn_mask is not None:  # a non-persistent buffer: made on the meta device, not in the file
        text.attn_mask = text.build_causal_mask()
    return vision, text


def _load_into(module: torch.nn.Module, weights: StateDict, name: str, tower: str) -> None:
    assign_weights(
        module,
        weights,
        mismatch=f"'{name}': its {tower} does not fit the OpenCLIP architecture read from its tensors and config",
        fix=f"Use the model's original OpenCLIP file ({ACCEPTED_FILES}), with the {CONFIG_FILE_NAME} that came with it.",
    )
