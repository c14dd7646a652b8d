"""Load OpenCLIP Vision / Load OpenCLIP Model: OpenCLIP files from the clip_vision model folder, through open_clip_torch."""

import functools
import os

import folder_paths
from comfy_api.latest import io

from ..openclip.config import config_path_of
from ..openclip.loading import ACCEPTED_MODELS, ACTIVATIONS
from ..openclip.model import load_openclip_model, load_openclip_vision
from .errors import errors_named_for, one_of, validation_result
from .model_files import LoadedFiles, model_file_path

OpenCLIPType = io.Custom("DECOUPLED_IPADAPTER_OPENCLIP")  # both towers of an OpenCLIP file (OpenCLIPModel)
FOLDER = "clip_vision"
_loaded = LoadedFiles()

ACTIVATION_TOOLTIP = (
    "The MLP activation, which a weights file does not record. auto: the quick_gelu of the open_clip_config.json "
    "beside the file if there is one, else QuickGELU for a file or folder named with openai/quickgelu (OpenAI's "
    "ViT-L-14), else GELU (LAION's ViT-H-14 and ViT-bigG-14)."
)


def _inputs() -> list:
    return [
        io.Combo.Input(
            "clip_name",
            options=folder_paths.get_filename_list(FOLDER),
            tooltip="The OpenCLIP file (open_clip_pytorch_model.bin or open_clip_model.safetensors, in a subfolder "
            "of ComfyUI/models/clip_vision or renamed there), with the model's open_clip_config.json in the same "
            "folder if it has one.",
        ),
        io.Combo.Input("activation", options=list(ACTIVATIONS), default="auto", tooltip=ACTIVATION_TOOLTIP),
    ]


def _config_stamp(path: str) -> tuple[int, int] | None:
    """(modification time, size) of the open_clip_config.json beside a file, None without one: a config added or
    edited since is read again."""
    try:
        status = os.stat(config_path_of(path))
    except FileNotFoundError:
        return None
    return status.st_mtime_ns, status.st_size


def _load_cached(load, clip_name: str, activation: str):
    """One copy of each file, config, activation and kind (image tower alone or both towers) while in use."""
    path = model_file_path(FOLDER, clip_name)
    variant = (load.__name__, activation, _config_stamp(path))
    return _loaded.get(path, functools.partial(load, activation=activation), variant=variant)


class _OpenCLIPFileNode(io.ComfyNode):
    """What both OpenCLIP loaders check when a prompt is queued: the file is in the folder, the activation known."""

    @classmethod
    def validate_inputs(cls, clip_name=None, activation=None):
        found = validation_result(clip_name, lambda name: model_file_path(FOLDER, name))
        return found if found is not True else validation_result(activation, one_of(ACTIVATIONS, input_name="activation"))


class LoadOpenCLIPVision(_OpenCLIPFileNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterOpenCLIPVisionLoader",
            display_name="Load OpenCLIP Vision",
            category="decoupled_ipadapter",
            description=(
                "Loads the image encoder of a model saved in the OpenCLIP format from models/clip_vision, as a CLIP "
                "vision model: connect it to IPAdapter Encode Image like Load CLIP Vision's output, no conversion "
                f"needed. Reads {ACCEPTED_MODELS}; the config's preprocessing is applied."
            ),
            inputs=_inputs(),
            outputs=[
                io.ClipVision.Output(
                    display_name="clip_vision",
                    tooltip="The image encoder; same embeds and hidden states as the converted file loaded with Load CLIP Vision.",
                ),
            ],
        )

    @classmethod
    def execute(cls, clip_name, activation) -> io.NodeOutput:
        with errors_named_for("Load OpenCLIP Vision"):
            return io.NodeOutput(_load_cached(load_openclip_vision, clip_name, activation))


class LoadOpenCLIPModel(_OpenCLIPFileNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterOpenCLIPLoader",
            display_name="Load OpenCLIP Model (scores)",
            category="decoupled_ipadapter",
            description=(
                "Loads both towers of a model saved in the OpenCLIP format from models/clip_vision, for CLIP-I / "
                f"CLIP-T Scores: {ACCEPTED_MODELS}. The paper scored with ViT-L-14; the tokenizer is open_clip's "
                "bundled one."
            ),
            inputs=_inputs(),
            outputs=[
                OpenCLIPType.Output(
                    display_name="openclip",
                    tooltip="The image and text towers; connect to CLIP-I / CLIP-T Scores.",
                ),
            ],
        )

    @classmethod
    def execute(cls, clip_name, activation) -> io.NodeOutput:
        with errors_named_for("Load OpenCLIP Model"):
            return io.NodeOutput(_load_cached(load_openclip_model, clip_name, activation))
