"""IPAdapter Unified Loader and Unified Loader FaceID: a preset picks the adapter file, its image encoder (and for
FaceID the InsightFace pack) from the model folders."""

import comfy.clip_vision
import folder_paths
from comfy_api.latest import io

from ..ipadapter_core.encoding import check_encoder_fits
from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.face_analysis import OFFICIAL_PACK, load_face_analysis, pack_root, providers
from ..ipadapter_core.presets import (
    FACEID_BASES,
    FACEID_PRESET_NAMES,
    INSIGHTFACE_PACK_FILE,
    PRESET_NAMES,
    Preset,
    check_detected_variant,
    faceid_preset,
    preset_files,
    preset_named,
)
from .errors import errors_named_for, one_of, validation_result
from .faceid import insightface_roots, packages_check
from .loader import load_ipadapter
from .model_files import model_file_path
from .types import InsightFaceType, IPAdapterType


def _files_of(preset: Preset, *, with_insightface: bool = False) -> tuple[str, str | None]:
    folders = {file.folder for file in (preset.adapter, preset.encoder, INSIGHTFACE_PACK_FILE) if file is not None}
    extra_missing = []
    if with_insightface:
        try:
            pack_root(insightface_roots(), OFFICIAL_PACK)
        except IPAdapterError:
            extra_missing.append(INSIGHTFACE_PACK_FILE)
    return preset_files(
        preset,
        available={folder: folder_paths.get_filename_list(folder) for folder in folders},
        folders={folder: folder_paths.get_folder_paths(folder) for folder in folders},
        extra_missing=extra_missing,
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
                "Loads an official IP-Adapter (or ostris's community composition adapter) and the image encoder it "
                "needs, found by preset in models/ipadapter "
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
                        "SD1.5 ViT-G and SDXL standard read ViT-bigG, the SDXL ViT-H ones read ViT-H; the "
                        "composition (community) presets are ostris's ip_plus_composition files, plus adapters that "
                        "carry the composition of the picture (ViT-H)."
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
            clip_vision = _checked_encoder(chosen, encoder_name, managed, adapter_name)
        return io.NodeOutput(managed, clip_vision)


def _checked_encoder(chosen: Preset, encoder_name: str, managed, adapter_name: str):
    clip_vision = _load_clip_vision(encoder_name)
    try:
        check_encoder_fits(clip_vision, managed.adapter.spec, adapter_name)
    except IPAdapterError as error:
        raise IPAdapterError(
            f"'{encoder_name}' was picked as the image encoder of preset '{chosen.name}' by its name, but {error} "
            f"The preset needs {chosen.encoder.name} ({chosen.encoder.url})."
        ) from error
    return clip_vision


class UnifiedLoaderFaceID(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterUnifiedLoaderFaceID",
            display_name="IPAdapter Unified Loader FaceID",
            category="decoupled_ipadapter",
            description=(
                "Loads an official IP-Adapter FaceID file for the chosen base, the ViT-H image encoder where it needs "
                "one (Plus, Plus V2) and InsightFace's buffalo_l pack from models/insightface/models/buffalo_l. A "
                "missing file is reported when the prompt is queued, with its folder and download link. Needs the "
                "optional packages insightface and onnxruntime."
            ),
            inputs=[
                io.Combo.Input(
                    "preset",
                    options=list(FACEID_PRESET_NAMES),
                    default=FACEID_PRESET_NAMES[0],
                    tooltip="FaceID (4 tokens), Plus and Plus V2 (also the face crop through ViT-H; SD1.5, Plus V2 also "
                    "SDXL), Portrait (16 tokens per face, several faces), Portrait unnorm (SDXL).",
                ),
                io.Combo.Input("base", options=list(FACEID_BASES), default=FACEID_BASES[0], tooltip="The model the adapter is for."),
                io.Combo.Input("provider", options=providers(), default="CPU", tooltip="Where InsightFace runs (see Load InsightFace)."),
            ],
            outputs=[
                IPAdapterType.Output(display_name="ipadapter", tooltip="Connect to IPAdapter Encode Face and Apply IPAdapter."),
                io.ClipVision.Output(
                    display_name="clip_vision", tooltip="The ViT-H image encoder for Plus and Plus V2 (nothing for the others)."
                ),
                InsightFaceType.Output(display_name="insightface", tooltip="Connect to IPAdapter Encode Face."),
            ],
        )

    @classmethod
    def validate_inputs(cls, preset=None, base=None, provider=None):
        if preset is None or base is None:
            return True
        for value, check in (
            (True, packages_check),
            (provider, one_of(providers(), input_name="provider")),
            (preset, lambda name: _files_of(faceid_preset(name, base), with_insightface=True)),
        ):
            result = validation_result(value, check)
            if result is not True:
                return result
        return True

    @classmethod
    def execute(cls, preset, base, provider) -> io.NodeOutput:
        with errors_named_for("IPAdapter Unified Loader FaceID"):
            chosen = faceid_preset(preset, base)
            adapter_name, encoder_name = _files_of(chosen, with_insightface=True)
            managed = load_ipadapter(adapter_name)
            check_detected_variant(chosen, managed.adapter.spec.variant, path=adapter_name)
            clip_vision = None if encoder_name is None else _checked_encoder(chosen, encoder_name, managed, adapter_name)
            analyser = load_face_analysis(insightface_roots(), OFFICIAL_PACK, provider)
        return io.NodeOutput(managed, clip_vision, analyser)
