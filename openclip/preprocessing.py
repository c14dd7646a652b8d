"""An OpenCLIP model's image preprocessing (its `preprocess_cfg`), applied with ComfyUI's CLIP preprocessing.

open_clip's inference transform for a model (open_clip.transform.image_transform) is: resize (`resize_mode`
`shortest`: the short side to the model's size, then a centre crop; `squash`: straight to a square; `longest`: the
long side, then padding), bicubic unless the config says `bilinear`, then normalise with the config's `mean` and
`std` (OpenAI's when it gives none). ComfyUI's `clip_preprocess` does the first two modes, bicubic with antialiasing,
rounds to 8-bit levels as an 8-bit picture would be, and takes mean and std as arguments; it is used as it is.
"""

import math
from dataclasses import dataclass

from ..ipadapter_core.errors import IPAdapterError

# OpenAI CLIP's pixel statistics (open_clip.constants.OPENAI_DATASET_MEAN/STD): open_clip's default, what OpenCLIP's
# ViT-H-14, ViT-bigG-14 and ViT-L-14 were trained with, and ComfyUI's CLIP vision default.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = {"shortest": "short side resized, centre crop", "squash": "squashed to a square"}
# open_clip's inference transform resizes bicubic for `random` too; ComfyUI resizes bicubic only.
INTERPOLATIONS = {"bicubic": "bicubic", "random": "bicubic", "bilinear": "bilinear"}


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str  # a RESIZE_MODES key
    interpolation: str  # what the model asks for: bicubic or bilinear
    source: str  # where the values come from, for the log

    @property
    def exact(self) -> bool:
        """Whether ComfyUI's resize is the model's own (ComfyUI resizes bicubic only)."""
        return self.interpolation == "bicubic"

    def describe(self) -> str:
        resize = f"{RESIZE_MODES[self.resize_mode]}, bicubic"
        if not self.exact:
            resize += f" (the model asks for {self.interpolation}, which ComfyUI's CLIP preprocessing does not offer)"
        return f"preprocessing mean {_listed(self.mean)}, std {_listed(self.std)}, {resize}; {self.source}"


def _listed(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:.4g}" for value in values) + ")"


OPENAI_PREPROCESSING = Preprocessing(
    mean=OPENAI_MEAN, std=OPENAI_STD, resize_mode="shortest", interpolation="bicubic", source="OpenAI's, open_clip's default"
)


def preprocessing_of(preprocess_cfg: dict, where: str) -> Preprocessing:
    """The preprocessing a config's `preprocess_cfg` asks for (open_clip's defaults where it is silent); `where`
    names the config file in errors."""
    if not isinstance(preprocess_cfg, dict):
        raise IPAdapterError(f"{where}: preprocess_cfg must be a JSON object, not {type(preprocess_cfg).__name__}.")
    mode = preprocess_cfg.get("mode", "RGB")
    if mode != "RGB":
        raise IPAdapterError(f"{where}: preprocess_cfg.mode is '{mode}'; OpenCLIP models read RGB images ('RGB').")
    resize_mode = preprocess_cfg.get("resize_mode") or "shortest"
    if resize_mode not in RESIZE_MODES:
        raise IPAdapterError(
            f"{where}: preprocess_cfg.resize_mode '{resize_mode}' is not supported. ComfyUI's CLIP preprocessing "
            f"offers {' and '.join(repr(mode) for mode in RESIZE_MODES)} ({'; '.join(RESIZE_MODES.values())})."
        )
    interpolation = preprocess_cfg.get("interpolation") or "bicubic"
    if interpolation not in INTERPOLATIONS:
        raise IPAdapterError(
            f"{where}: preprocess_cfg.interpolation '{interpolation}' is not one of open_clip's "
            f"({', '.join(INTERPOLATIONS)})."
        )
    return Preprocessing(
        mean=_channel_values(preprocess_cfg.get("mean"), OPENAI_MEAN, f"{where}: preprocess_cfg.mean", positive=False),
        std=_channel_values(preprocess_cfg.get("std"), OPENAI_STD, f"{where}: preprocess_cfg.std", positive=True),
        resize_mode=resize_mode,
        interpolation=INTERPOLATIONS[interpolation],
        source=f"from {where}",
    )


def _channel_values(value, default: tuple, where: str, *, positive: bool) -> tuple[float, float, float]:
    """One number per RGB channel; a single number is used for all three, as open_clip does."""
    if value is None:
        return default
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    values = values * 3 if len(values) == 1 else values
    numbers = all(isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item) for item in values)
    if len(values) != 3 or not numbers:
        raise IPAdapterError(f"{where} must be one number or three (R, G, B), not {value!r}.")
    if positive and min(values) <= 0:
        raise IPAdapterError(f"{where} must be positive, not {value!r}.")
    return tuple(float(item) for item in values)


def comfy_clip_preprocess():
    """ComfyUI's CLIP preprocessing, which takes mean and std: `comfy.clip_model.clip_preprocess` on newer ComfyUI,
    `comfy.clip_vision.clip_preprocess` where clip_model has none (0.3.75)."""
    import comfy.clip_model

    if hasattr(comfy.clip_model, "clip_preprocess"):
        return comfy.clip_model.clip_preprocess
    import comfy.clip_vision

    return comfy.clip_vision.clip_preprocess


def preprocess(image, preprocessing: Preprocessing, *, size: int, crop: bool):
    """IMAGE `[B, H, W, C]` -> normalised pixels `[B, 3, size, size]`. `crop=False` squashes (ComfyUI's "none");
    `crop=True` resizes as the model was trained: a centre crop, or a squash for a `squash` model."""
    return comfy_clip_preprocess()(
        image,
        size=size,
        mean=list(preprocessing.mean),
        std=list(preprocessing.std),
        crop=crop and preprocessing.resize_mode == "shortest",
    )
