"""An OpenCLIP file as ComfyUI models: the image tower behind ComfyUI's CLIP_VISION interface, the text tower beside it.

`OpenCLIPVision` offers what ComfyUI's `comfy.clip_vision.ClipVisionModel` offers its users (the Encode node,
ipadapter_core/encoding.py, ComfyUI's own CLIP vision nodes): `encode_image(image, crop=True)` with ComfyUI's
preprocessing (`comfy.clip_vision.clip_preprocess`, OpenAI's mean and std, which OpenCLIP's ViT-H/bigG/L use too),
returning `image_embeds`, `penultimate_hidden_states` and `last_hidden_state`; `model` (called with
`pixel_values=`, `intermediate_output=`; `model.visual_projection.weight`), `patcher`, `load_device`, `image_size`.
Both towers are under ComfyUI's memory management (a ModelPatcher each), as ComfyUI's own encoders are.
"""

import logging
import os
from dataclasses import dataclass

import torch

from ..ipadapter_core.errors import IPAdapterError
from .loading import (
    OpenCLIPArchitecture,
    architecture_of,
    build_towers,
    import_open_clip,
    quick_gelu_of,
    read_openclip_file,
)
from .vision_tower import OpenCLIPVisionModel

# OpenAI CLIP's pixel statistics (open_clip.constants.OPENAI_DATASET_MEAN/STD): what OpenCLIP's ViT-H-14,
# ViT-bigG-14 and ViT-L-14 were trained with, and ComfyUI's CLIP vision default.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def compute_dtype(device: torch.device) -> torch.dtype:
    """fp32 on a CPU (plain torch modules cannot cast fp16 weights layer by layer as ComfyUI's ops do), else
    ComfyUI's text-encoder dtype (fp16 unless a --*-text-enc flag says otherwise; fp8 is not offered here)."""
    if device.type == "cpu":
        return torch.float32
    import comfy.model_management

    dtype = comfy.model_management.text_encoder_dtype(device)
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float16


def _patcher(module: torch.nn.Module, load_device: torch.device):
    import comfy.model_management
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(
        module, load_device=load_device, offload_device=comfy.model_management.text_encoder_offload_device()
    )


class OpenCLIPVision:
    """ComfyUI's CLIP_VISION interface over an OpenCLIP image tower."""

    def __init__(self, model: OpenCLIPVisionModel, architecture: OpenCLIPArchitecture, source: str, load_device: torch.device):
        self.model = model.eval().requires_grad_(False)
        self.architecture = architecture
        self.source = source
        self.image_size = architecture.image_size
        self.image_mean = list(OPENAI_MEAN)
        self.image_std = list(OPENAI_STD)
        self.load_device = load_device
        self.dtype = model.visual_projection.weight.dtype
        self.patcher = _patcher(model, load_device)

    def get_sd(self) -> dict:
        return self.model.state_dict()

    def encode_image(self, image: torch.Tensor, crop: bool = True):
        """IMAGE `[B, H, W, C]` -> ComfyUI's CLIP vision output: `image_embeds` [B, E], `penultimate_hidden_states`
        and `last_hidden_state` [B, T, W], in fp32 on ComfyUI's intermediate device."""
        import comfy.clip_vision
        import comfy.model_management

        comfy.model_management.load_model_gpu(self.patcher)
        pixel_values = comfy.clip_vision.clip_preprocess(
            image.to(self.load_device), size=self.image_size, mean=self.image_mean, std=self.image_std, crop=crop
        ).float()  # [B, 3, S, S]
        with torch.no_grad():
            last, penultimate, image_embeds, _ = self.model(pixel_values=pixel_values, intermediate_output=-2)
        device = comfy.model_management.intermediate_device()
        outputs = comfy.clip_vision.Output()
        outputs["last_hidden_state"] = last.to(device=device, dtype=torch.float32)
        outputs["penultimate_hidden_states"] = penultimate.to(device=device, dtype=torch.float32)
        outputs["image_embeds"] = image_embeds.to(device=device, dtype=torch.float32)
        outputs["mm_projected"] = None
        return outputs


class OpenCLIPText:
    """An OpenCLIP text tower and open_clip's own tokenizer (its bundled BPE vocabulary: nothing is downloaded)."""

    def __init__(self, tower: torch.nn.Module, source: str, load_device: torch.device):
        self.tower = tower.eval().requires_grad_(False)
        self.source = source
        self.load_device = load_device
        self.tokenizer = import_open_clip("tokenizer").SimpleTokenizer(context_length=tower.context_length)
        self.patcher = _patcher(tower, load_device)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> text embeddings `[N, E]` (fp32, CPU); a caption longer than the context is cut, as open_clip does."""
        import comfy.model_management

        comfy.model_management.load_model_gpu(self.patcher)
        tokens = self.tokenizer(captions).to(self.load_device)  # [N, context_length]
        with torch.no_grad():
            return self.tower(tokens).to(device="cpu", dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class OpenCLIPModel:
    """Both towers of an OpenCLIP file, for scoring images against an image prompt and a caption."""

    vision: OpenCLIPVision
    text: OpenCLIPText | None
    architecture: OpenCLIPArchitecture
    source: str


def _read(path: str, activation: str) -> tuple[dict, OpenCLIPArchitecture, str]:
    source = os.path.basename(path)
    state_dict = read_openclip_file(path)
    architecture = architecture_of(state_dict, source, quick_gelu=quick_gelu_of(path, activation))
    return state_dict, architecture, source


def _device_and_dtype() -> tuple[torch.device, torch.dtype]:
    import comfy.model_management

    device = comfy.model_management.text_encoder_device()
    return device, compute_dtype(device)


def load_openclip_vision(path: str, *, activation: str = "auto") -> OpenCLIPVision:
    """The image tower of an OpenCLIP file, as a CLIP_VISION; the text tower, if any, is not built."""
    state_dict, architecture, source = _read(path, activation)
    device, dtype = _device_and_dtype()
    visual, _ = build_towers(architecture, state_dict, source, with_text=False, dtype=dtype)
    logging.info("Decoupled IP-Adapter: %s is %s", source, architecture.describe())
    return OpenCLIPVision(OpenCLIPVisionModel(visual), architecture, source, device)


def load_openclip_model(path: str, *, activation: str = "auto") -> OpenCLIPModel:
    """Both towers of an OpenCLIP file (the text tower is None for a file that holds the image tower alone)."""
    state_dict, architecture, source = _read(path, activation)
    device, dtype = _device_and_dtype()
    visual, text = build_towers(architecture, state_dict, source, with_text=True, dtype=dtype)
    logging.info("Decoupled IP-Adapter: %s is %s", source, architecture.describe())
    return OpenCLIPModel(
        vision=OpenCLIPVision(OpenCLIPVisionModel(visual), architecture, source, device),
        text=None if text is None else OpenCLIPText(text, source, device),
        architecture=architecture,
        source=source,
    )


def require_text_tower(model: OpenCLIPModel, where: str) -> OpenCLIPText:
    if model.text is None:
        raise IPAdapterError(
            f"{where}: '{model.source}' holds an image tower only, and CLIP-T needs the text tower too. Load the full "
            "OpenCLIP model (open_clip_pytorch_model.bin or open_clip_model.safetensors from the model's repository), "
            "or leave the caption empty to compute CLIP-I alone."
        )
    return model.text
