"""Load IPAdapter: an official checkpoint file from the `ipadapter` model folder."""

import logging
import os
from collections import OrderedDict

import folder_paths
from comfy_api.latest import io

from ..ipadapter_core.adapter import load_adapter
from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.memory import ManagedAdapter, manage
from .errors import errors_named_for
from .types import IPAdapterType

FOLDER = "ipadapter"
EXTENSIONS = {".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt"}
CACHE_SIZE = 4
_loaded: "OrderedDict[tuple, ManagedAdapter]" = OrderedDict()


def register_model_folder() -> None:
    """`models/ipadapter`, plus any `ipadapter:` paths the user's extra_model_paths.yaml added before us."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(extensions) | EXTENSIONS)


def load_cached(path: str) -> ManagedAdapter:
    """One load per file version: a second Load node (or a re-run) on the same file shares the same weights."""
    status = os.stat(path)
    key = (os.path.realpath(path), status.st_mtime_ns, status.st_size)
    if key not in _loaded:
        adapter = load_adapter(path)
        logging.info("Decoupled IP-Adapter: %s is %s", adapter.source, adapter.spec.describe())
        _loaded[key] = manage(adapter)
        while len(_loaded) > CACHE_SIZE:
            _loaded.popitem(last=False)
    _loaded.move_to_end(key)
    return _loaded[key]


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
    def execute(cls, ipadapter_name) -> io.NodeOutput:
        with errors_named_for("Load IPAdapter"):
            path = folder_paths.get_full_path(FOLDER, ipadapter_name)
            if path is None:
                folders = ", ".join(folder_paths.get_folder_paths(FOLDER))
                raise IPAdapterError(
                    f"'{ipadapter_name}' is not in the ipadapter model folders ({folders}). "
                    "Put the file there (or fix the name), then refresh the node list."
                )
            return io.NodeOutput(load_cached(path))
