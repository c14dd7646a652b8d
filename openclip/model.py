"""An OpenCLIP file as ComfyUI models: the image tower behind ComfyUI's CLIP_VISION interface, the text tower beside it.

`OpenCLIPVision` offers what ComfyUI's `comfy.clip_vision.ClipVisionModel` offers its users (the Encode node,
ipadapter_core/encoding.py, ComfyUI's own CLIP vision nodes): `encode_image(image, crop=True)` with ComfyUI's
preprocessing and the model's own mean, std and resize mode (preprocessing.py; OpenAI's without a config, which
OpenCLIP's ViT-H/bigG/L use), returning `image_embeds`, `penultimate_hidden_states` and `last_hidden_state`; `model`
(called with `pixel_values=`, `intermediate_output=`; `model.visual_projection.weight`), `patcher`, `load_device`,
`image_size`, `image_mean`, `image_std`. Both towers are under ComfyUI's memory management (a ModelPatcher each), as
ComfyUI's own encoders are.
"""

import logging
import os
from dataclasses import dataclass

import torch

from ..ipadapter_core.errors import IPAdapterError
from .config import read_openclip_config
from .library import import_open_clip
from .loading import OpenCLIPArchitecture, architecture_of, build_towers, quick_gelu_of, read_openclip_file
from .preprocessing import preprocess
from .tensors import ACCEPTED_FILES
from .vision_tower import OpenCLIPVisionModel


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
        self.preprocessing = architecture.preprocessing
        self.image_mean = list(self.preprocessing.mean)
        self.image_std = list(self.preprocessing.std)
        self.load_device = load_device
        self.dtype = model.visual_projection.weight.dtype
        self.patcher = _patcher(model, load_device)

    def get_sd(self) -> dict:
        return self.model.state_dict()

    def encode_image(self, image: torch.Tensor, crop: bool = True):
        """IMAGE `[B, H, W, C]` -> ComfyUI's CLIP vision output: `image_embeds` [B, E], `penultimate_hidden_states`
        and `last_hidden_state` [B, T, W], in fp32 on ComfyUI's intermediate device. `crop=True` resizes as the model
        was trained (a centre crop, or a squash for a model whose config says `squash`); `crop=False` squashes."""
        import comfy.clip_vision
        import comfy.model_management

        comfy.model_management.load_model_gpu(self.patcher)
        pixel_values = preprocess(
            image.to(self.load_device), self.preprocessing, size=self.image_size, crop=crop
        ).float()  # [B, 3, S, S]
        with torch.no_grad():
            last, penultimate, image_embeds, _ = self.model(pixel_values=pixel_values, intermediate_output=-2)
        device = comfy.model_management.intermediate_device()
        outputs = comfy.clip_vision.Output()
        outputs["last_hidden_state"] = last.to(device=device, dtype=torch.float32)
        outputs["penultimate_hidden_states"] = penultimate.to(device=device, dtype=torch.float32)
        outputs["image_embeds"] = image_embeds.to(device=device, dtype=torch.float32)
        outputs["mm_projected"] = None
        outputs["image_sizes"] = [pixel_values.shape[1:]] * pixel_values.shape[0]  # per image (3, S, S), as newer ComfyUI gives
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


def _read(path: str, activation: str, *, with_text: bool) -> tuple[dict, OpenCLIPArchitecture, str]:
    source = os.path.basename(path)
    state_dict = read_openclip_file(path)
    config = read_openclip_config(path)
    quick_gelu = quick_gelu_of(path, activation, config)
    architecture = architecture_of(state_dict, source, quick_gelu=quick_gelu, config=config, with_text=with_text)
    return state_dict, architecture, source


def _log(source: str, architecture: OpenCLIPArchitecture) -> None:
    """The architecture and the preprocessing, in one line; a warning where ComfyUI cannot resize as the model asks."""
    level = logging.INFO if architecture.preprocessing.exact else logging.WARNING
    logging.log(level, "Decoupled IP-Adapter: %s is %s", source, architecture.describe())


def _device_and_dtype() -> tuple[torch.device, torch.dtype]:
    import comfy.model_management

    device = comfy.model_management.text_encoder_device()
    return device, compute_dtype(device)


def load_openclip_vision(path: str, *, activation: str = "auto") -> OpenCLIPVision:
    """The image tower of an OpenCLIP file, as a CLIP_VISION; the text tower, if any, is not built."""
    state_dict, architecture, source = _read(path, activation, with_text=False)
    device, dtype = _device_and_dtype()
    visual, _ = build_towers(architecture, state_dict, source, with_text=False, dtype=dtype)
    _log(source, architecture)
    return OpenCLIPVision(OpenCLIPVisionModel(visual), architecture, source, device)


def load_openclip_model(path: str, *, activation: str = "auto") -> OpenCLIPModel:
    """Both towers of an OpenCLIP file (the text tower is None for a file that holds the image tower alone)."""
    state_dict, architecture, source = _read(path, activation, with_text=True)
    device, dtype = _device_and_dtype()
    visual, text = build_towers(architecture, state_dict, source, with_text=True, dtype=dtype)
    _log(source, architecture)
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
            f"OpenCLIP model ({ACCEPTED_FILES} from the model's repository), "
            "or leave the caption empty to compute CLIP-I alone."
        )
    return model.text
