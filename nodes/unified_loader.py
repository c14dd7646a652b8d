"""IPAdapter Unified Loader: a preset picks the adapter file and its image encoder from the model folders."""

import comfy.clip_vision
import folder_paths
from comfy_api.latest import io

from ..ipadapter_core.encoding import check_encoder_fits
from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.presets import PRESET_NAMES, Preset, check_detected_variant, preset_files, preset_named
from .errors import errors_named_for, validation_result
from .loader import load_ipadapter
from .model_files import model_file_path
from .types import IPAdapterType


def _files_of(preset: Preset) -> tuple[str, str]:
    folders = {preset.adapter.folder, preset.encoder.folder}
    return preset_files(
        preset,
        available={folder: folder_paths.get_filename_list(folder) for folder in folders},
        folders={folder: folder_paths.get_folder_paths(folder) for folder in folders},
    )


def _load_clip_vision(name: str):
    """ComfyUI's own CLIP vision loading (what Load CLIP Vision does) of `name` in the clip_vision folders."""
    clip_vision = comfy.clip_vision.load(model_file_path("clip_vision", name))
    if clip_vision is None:
        raise IPAdapterError(
            f"'{name}' is not a CLIP vision model ComfyUI can read. Replace it with the official image encoder."
        )
    return clip_vision


class UnifiedLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterUnifiedLoader",
            display_name="IPAdapter Unified Loader",
            category="decoupled_ipadapter",
            description=(
                "Loads an official IP-Adapter and the image encoder it needs, found by preset in models/ipadapter "
                "and models/clip_vision under their official names or the usual renames "
                "(e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors for h94's image_encoder/model.safetensors). "
                "A missing file is reported when the prompt is queued, with its folder and download link."
            ),
            inputs=[
                io.Combo.Input(
                    "preset",
                    options=list(PRESET_NAMES),
                    default=PRESET_NAMES[0],
                    tooltip=(
                        "Which adapter: SD1.5 standard / light / plus / plus-face / full-face read the ViT-H encoder, "
                        "SD1.5 ViT-G and SDXL standard read ViT-bigG, the SDXL ViT-H ones read ViT-H."
                    ),
                ),
            ],
            outputs=[
                IPAdapterType.Output(
                    display_name="ipadapter",
                    tooltip="The loaded adapter; connect it to IPAdapter Encode Image and Apply IPAdapter.",
                ),
                io.ClipVision.Output(
                    display_name="clip_vision", tooltip="The image encoder this adapter needs; connect it to Encode Image."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, preset=None):
        return validation_result(preset, lambda name: _files_of(preset_named(name)))

    @classmethod
    def execute(cls, preset) -> io.NodeOutput:
        with errors_named_for("IPAdapter Unified Loader"):
            chosen = preset_named(preset)
            adapter_name, encoder_name = _files_of(chosen)
            managed = load_ipadapter(adapter_name)
            check_detected_variant(chosen, managed.adapter.spec.variant, path=adapter_name)
            clip_vision = _load_clip_vision(encoder_name)
            try:
                check_encoder_fits(clip_vision, managed.adapter.spec, adapter_name)
            except IPAdapterError as error:
                raise IPAdapterError(
                    f"'{encoder_name}' was picked as the image encoder of preset '{preset}' by its name, but {error} "
                    f"The preset needs {chosen.encoder.name} ({chosen.encoder.url})."
                ) from error
        return io.NodeOutput(managed, clip_vision)
