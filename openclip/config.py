"""open_clip_config.json, the config open_clip saves beside a model's weights, read and checked against the tensors.

Its format (open_clip's factory and hub code): `{"model_cfg": {"embed_dim", "vision_cfg": {CLIPVisionCfg fields},
"text_cfg": {CLIPTextCfg fields}, "quick_gelu"}, "preprocess_cfg": {"mean", "std", "interpolation", "resize_mode"}}`.
A bare model config (open_clip/model_configs/*.json: embed_dim, vision_cfg and text_cfg at the top) is read as the
model_cfg, as open_clip's hub loader reads it. A field the config leaves out has open_clip's default, as in open_clip.

Every field the tensors also give (widths, layers, patch, image size, MLP width, context, vocabulary, embedding
width) is checked against them, and a contradiction is refused quoting both. What the tensors cannot give (head
widths, pooling, activation, preprocessing) is the config's; the towers are built from its own vision_cfg and
text_cfg, so open_clip's constructors build what open_clip's factory would build from the same config.
"""

import dataclasses
import json
import os
from dataclasses import dataclass

from ..ipadapter_core.errors import IPAdapterError
from .library import import_open_clip
from .tensors import ModelShapes, TowerShapes

CONFIG_FILE_NAME = "open_clip_config.json"
# Truthy fields whose models this loader cannot rebuild, and why.
UNSUPPORTED_MODEL = {
    "custom_text": "a text tower stored under text. (open_clip's CustomTextCLIP)",
    "multimodal_cfg": "a CoCa model",
}
UNSUPPORTED_VISION = {
    "timm_model_name": "a timm image tower",
    "attentional_pool": "attentional pooling (CoCa)",
}
UNSUPPORTED_TEXT = {
    "hf_model_name": "a Hugging Face text tower",
    "hf_tokenizer_name": "a Hugging Face tokenizer (the pack tokenizes with open_clip's bundled one)",
    "tokenizer_mode": "a tokenizer mode (the pack tokenizes with open_clip's bundled tokenizer as it is)",
    "tokenizer_kwargs": "tokenizer settings (the pack tokenizes with open_clip's bundled tokenizer as it is)",
    "embed_cls": "a class token in the text tower (CoCa)",
    "proj_bias": "a text projection with a bias",
}


@dataclass(frozen=True)
class OpenCLIPConfig:
    path: str
    model: dict  # model_cfg
    preprocess: dict  # preprocess_cfg; {} when the file has none


def config_path_of(weights_path: str) -> str:
    """Where a weights file's config is: open_clip_config.json in the same folder, as open_clip saves it."""
    return os.path.join(os.path.dirname(os.path.abspath(weights_path)), CONFIG_FILE_NAME)


def read_openclip_config(weights_path: str) -> OpenCLIPConfig | None:
    """The config beside a weights file, or None when there is none."""
    path = config_path_of(weights_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (OSError, ValueError) as error:
        raise IPAdapterError(f"'{path}' cannot be read as OpenCLIP's config ({error}). Fix or remove it.") from error
    if not isinstance(content, dict):
        raise IPAdapterError(f"'{path}' is not OpenCLIP's config: it holds a JSON {type(content).__name__}, not an object.")
    model = content.get("model_cfg", content)
    preprocess = content.get("preprocess_cfg", {}) if "model_cfg" in content else {}
    if not isinstance(model, dict):
        raise IPAdapterError(f"'{path}': model_cfg must be a JSON object, not {type(model).__name__}.")
    return OpenCLIPConfig(path=path, model=model, preprocess=preprocess)


def tower_configs_from_config(config: OpenCLIPConfig, shapes: ModelShapes, name: str) -> tuple[dict, dict | None]:
    """(CLIPVisionCfg fields, CLIPTextCfg fields or None): the config's own, checked against the tensors' shapes."""
    open_clip_model = import_open_clip("model")
    where = f"'{name}' with its {CONFIG_FILE_NAME} ('{config.path}')"
    _refuse_unsupported(config.model, UNSUPPORTED_MODEL, "", where)
    vision, mismatches = _vision_fields(config, shapes, where, open_clip_model.CLIPVisionCfg)
    text = None
    if shapes.text is not None:
        text, text_mismatches = _text_fields(config, shapes.text, where, open_clip_model.CLIPTextCfg)
        mismatches += text_mismatches
    if mismatches:
        raise IPAdapterError(
            f"{where}: the config contradicts the tensors: {'; '.join(mismatches)}. Put the {CONFIG_FILE_NAME} that "
            "came with these weights beside the file."
        )
    _check_whole_heads(where, "vision_cfg.head_width", vision["head_width"], vision["width"])
    if text is not None:
        _check_whole_heads(where, "text_cfg.heads", text["heads"], text["width"])
    return vision, text


def _vision_fields(config: OpenCLIPConfig, shapes: ModelShapes, where: str, config_class) -> tuple[dict, list[str]]:
    section = _section(config, "vision_cfg", where, required=True)
    if isinstance(section.get("layers"), (list, tuple)):
        raise IPAdapterError(f"{where}: vision_cfg.layers is a list (a ResNet image tower); this loader reads ViTs only.")
    _refuse_unsupported(section, UNSUPPORTED_VISION, "vision_cfg.", where)
    vision = _effective(config_class, section, "vision_cfg", where)
    if vision.pool_type == "none":
        raise IPAdapterError(f"{where}: vision_cfg.pool_type 'none' gives no image embedding; this loader needs one.")
    embed_dim = config.model.get("embed_dim", "not set")
    mismatches = [
        *_mismatches("vision_cfg", section, shapes.vision, vision, ("width", "layers", "patch_size", "image_size")),
        *_value_mismatch("embed_dim", embed_dim, shapes.embed_dim, shapes.vision.evidence["embed_dim"]),
    ]
    fields = dict(  # the sizes as open_clip's single numbers (a config may give [height, width])
        section, width=vision.width, layers=vision.layers, head_width=vision.head_width, mlp_ratio=vision.mlp_ratio,
        patch_size=shapes.vision.patch_size, image_size=shapes.vision.image_size,
    )
    return fields, mismatches


def _text_fields(config: OpenCLIPConfig, shapes: TowerShapes, where: str, config_class) -> tuple[dict, list[str]]:
    section = _section(config, "text_cfg", where, required=False)
    _refuse_unsupported(section, UNSUPPORTED_TEXT, "text_cfg.", where)
    text = _effective(config_class, section, "text_cfg", where)
    if text.proj_type != "linear":
        raise IPAdapterError(f"{where}: text_cfg.proj_type '{text.proj_type}' is not supported (only 'linear').")
    mismatches = _mismatches("text_cfg", section, shapes, text, ("width", "layers", "context_length", "vocab_size"))
    fields = dict(
        section, width=text.width, layers=text.layers, heads=text.heads, mlp_ratio=text.mlp_ratio,
        context_length=text.context_length, vocab_size=text.vocab_size,
    )
    return fields, mismatches


def _section(config: OpenCLIPConfig, key: str, where: str, *, required: bool) -> dict:
    section = config.model.get(key)
    if section is None and not required:
        return {}
    if not isinstance(section, dict):
        raise IPAdapterError(
            f"{where}: model_cfg.{key} must be a JSON object (open_clip's {key}), not {type(section).__name__}."
        )
    return section


def _refuse_unsupported(section: dict, unsupported: dict, prefix: str, where: str) -> None:
    for field, what in unsupported.items():
        if section.get(field):
            raise IPAdapterError(f"{where}: {prefix}{field} makes it {what}, which this loader does not support.")


def _effective(config_class, section: dict, label: str, where: str):
    """open_clip's dataclass for a section: the config's values, open_clip's defaults for the rest."""
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise IPAdapterError(
            f"{where}: {label} has fields this open_clip does not know ({', '.join(unknown)}). Use a config written "
            "by open_clip, or update open_clip_torch."
        )
    return config_class(**section)


def _mismatches(label: str, section: dict, shapes: TowerShapes, effective, fields: tuple[str, ...]) -> list[str]:
    found = []
    for field in fields:
        value = getattr(effective, field)
        if field in ("patch_size", "image_size") and isinstance(value, (list, tuple)):
            value = value[0] if len(set(value)) == 1 else value  # open_clip's (height, width); square only
        shown = value if field in section else f"{value} (open_clip's default: the config does not set it)"
        found += _value_mismatch(f"{label}.{field}", value, getattr(shapes, field), shapes.evidence[field], shown=shown)
    if not _is_number(effective.width) or not _is_number(effective.mlp_ratio):
        return [*found, f"{label}.width and {label}.mlp_ratio must be numbers ({effective.width!r}, {effective.mlp_ratio!r})"]
    mlp_width = int(effective.width * effective.mlp_ratio)  # open_clip's rule
    if mlp_width != shapes.mlp_width:
        found.append(
            f"{label}.mlp_ratio {effective.mlp_ratio} makes the MLP {mlp_width} wide in the config but it is "
            f"{shapes.mlp_width} wide in the tensors ({shapes.evidence['mlp_width']})"
        )
    return found


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value_mismatch(field: str, value, tensor_value: int, evidence: str, *, shown=None) -> list[str]:
    if value == tensor_value:
        return []
    return [f"{field} is {value if shown is None else shown} in the config but {tensor_value} in the tensors ({evidence})"]


def _check_whole_heads(where: str, field: str, value, width: int) -> None:
    """`value` is a head width (vision_cfg.head_width) or a head count (text_cfg.heads): either divides the width."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or width % value:
        raise IPAdapterError(
            f"{where}: {field} {value!r} does not split the tower's width {width} into whole attention heads. Put the "
            f"{CONFIG_FILE_NAME} that came with these weights beside the file."
        )
