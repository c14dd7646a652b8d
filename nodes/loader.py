"""Load IPAdapter: an official checkpoint file from the `ipadapter` model folder."""

import logging
import os

import folder_paths
from comfy_api.latest import io

from ..ipadapter_core.adapter import load_adapter
from ..ipadapter_core.memory import ManagedAdapter, manage
from .errors import errors_named_for, validation_result
from .model_files import LoadedFiles, model_file_path
from .types import IPAdapterType

FOLDER = "ipadapter"
EXTENSIONS = {".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt"}
_loaded = LoadedFiles()


INSIGHTFACE_FOLDER = "insightface"  # models/insightface: its models/<pack>/ folders hold InsightFace's model packs


def register_model_folder() -> None:
    """`models/ipadapter` and `models/insightface`, plus any `ipadapter:` / `insightface:` paths the user's
    extra_model_paths.yaml added before us."""
    for folder, extensions in ((FOLDER, EXTENSIONS), (INSIGHTFACE_FOLDER, {".onnx"})):
        default = os.path.join(folder_paths.models_dir, folder)
        paths, known = folder_paths.folder_names_and_paths.get(folder, ([], set()))
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[folder] = (paths, set(known) | extensions)


def _load_and_manage(path: str) -> ManagedAdapter:
    adapter = load_adapter(path)
    logging.info("Decoupled IP-Adapter: %s is %s", adapter.source, adapter.spec.describe())
    return manage(adapter)


def load_ipadapter(name: str) -> ManagedAdapter:
    """The adapter file `name` of the ipadapter model folders: one copy per file version while in use (shared by
    the loaders)."""
    return _loaded.get(model_file_path(FOLDER, name), _load_and_manage)


class LoadIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterLoader",
            display_name="Load IPAdapter",
            category="decoupled_ipadapter",
            description=(
                "Loads an official IP-Adapter checkpoint (.safetensors, or .bin read as weights only) from "
                "models/ipadapter and detects what it is: base model, projection type, token count and the image "
                "encoder it needs."
            ),
            inputs=[
                io.Combo.Input(
                    "ipadapter_name",
                    options=folder_paths.get_filename_list(FOLDER),
                    tooltip="The IP-Adapter file, e.g. ip-adapter_sd15.safetensors, from ComfyUI/models/ipadapter.",
                ),
            ],
            outputs=[
                IPAdapterType.Output(
                    display_name="ipadapter",
                    tooltip="The loaded adapter; connect it to IPAdapter Encode Image and Apply IPAdapter.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, ipadapter_name=None):
        """A file that is not in the folder is refused when the prompt is queued, not when it runs."""
        return validation_result(ipadapter_name, lambda name: model_file_path(FOLDER, name))

    @classmethod
    def execute(cls, ipadapter_name) -> io.NodeOutput:
        with errors_named_for("Load IPAdapter"):
            return io.NodeOutput(load_ipadapter(ipadapter_name))
