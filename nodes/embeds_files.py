"""IPAdapter Save Embeds / Load Embeds: image-prompt embeds as .safetensors files, saved to ComfyUI's output folder
and loaded from its input folder (the format: ipadapter_core/embeds_file.py); Load Embeds also reads the `.ipadpt`
files of ComfyUI_IPAdapter_plus."""

import hashlib
import json
import os

import comfy.utils
import folder_paths
from comfy.cli_args import args
from comfy_api.latest import io

from ..ipadapter_core.embeds_file import (
    PORT_EXTENSION,
    embeds_file_content,
    read_embeds_file,
    read_embeds_metadata,
    read_port_embeds_file,
    read_port_embeds_tensor,
)
from ..ipadapter_core.errors import IPAdapterError
from .errors import errors_named_for, validation_result
from .types import EmbedsType

EXTENSION = ".safetensors"


def _save_location(filename_prefix: str) -> tuple[str, str, str]:
    """(folder, file name, subfolder) of the next file for `filename_prefix` in the output folder, counted as
    SaveImage counts: <prefix>_00001_.safetensors, <prefix>_00002_.safetensors, …"""
    try:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
    except Exception as error:  # ComfyUI raises a bare Exception for a prefix that leaves the output folder
        raise IPAdapterError(
            f"filename_prefix '{filename_prefix}' cannot be used ({error}). Use a name, or subfolder/name, inside "
            "ComfyUI's output folder."
        ) from error
    return folder, f"{filename}_{counter:05}_{EXTENSION}", subfolder


def _workflow_metadata(hidden) -> dict[str, str]:
    """The prompt and workflow, as ComfyUI's own save nodes store them (unless --disable-metadata)."""
    if args.disable_metadata or hidden is None:  # hidden: None when called outside ComfyUI's executor
        return {}
    metadata = {} if hidden.prompt is None else {"prompt": json.dumps(hidden.prompt)}
    metadata.update({key: json.dumps(value) for key, value in (hidden.extra_pnginfo or {}).items()})
    return metadata


def embeds_file_path(name: str) -> str:
    """The path of `name` in the input folder (or the folder a ' [output]' / ' [temp]' suffix names, as Load Image
    reads them); a name that leads outside that folder is refused."""
    relative, base = folder_paths.annotated_filepath(name)
    base = os.path.realpath(base or folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath((base, path)) != base:  # also a link inside the folder that points out of it
        raise IPAdapterError(f"'{name}' leads outside ComfyUI's input folder; pick a file of the list.")
    return path


def _input_files() -> list[str]:
    """Our .safetensors files in the input folder itself, and the port's .ipadpt files anywhere under it (paths
    relative to it, as the port lists them)."""
    directory = folder_paths.get_input_directory()
    if not os.path.isdir(directory):
        return []
    names = (name for name in os.listdir(directory) if name.lower().endswith(EXTENSION))
    ours = [name for name in names if os.path.isfile(os.path.join(directory, name))]
    ports = [
        os.path.relpath(os.path.join(folder, name), directory)
        for folder, _, files in os.walk(directory)
        for name in files
        if _is_port_file(name)
    ]
    return sorted(ours + ports)


def _is_port_file(name: str) -> bool:
    return name.lower().endswith(PORT_EXTENSION)


def _check_embeds_file(name: str) -> None:
    """The cheap check before a prompt runs: our file's header, or the port file's one tensor."""
    path = embeds_file_path(name)
    if _is_port_file(name):
        read_port_embeds_tensor(path)
    else:
        read_embeds_metadata(path)


class SaveEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterSaveEmbeds",
            display_name="IPAdapter Save Embeds",
            category="decoupled_ipadapter",
            description=(
                "Saves image-prompt embeds (positive and negative, with the adapter and image encoder they were "
                "encoded for) as a .safetensors file in ComfyUI's output folder, so the reference need not be "
                "encoded again. Move the file to the input folder to load it with IPAdapter Load Embeds."
            ),
            inputs=[
                EmbedsType.Input("embeds", tooltip="The embeds from IPAdapter Encode Image or Combine Embeds."),
                io.String.Input(
                    "filename_prefix",
                    default="ipadapter_embeds/embeds",
                    tooltip="File name (a subfolder/ is allowed) in the output folder; a counter and .safetensors are added.",
                ),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, embeds, filename_prefix) -> io.NodeOutput:
        with errors_named_for("IPAdapter Save Embeds"):
            folder, file, subfolder = _save_location(filename_prefix)
            tensors, metadata = embeds_file_content(embeds)
            metadata = {**_workflow_metadata(cls.hidden), **metadata}
            comfy.utils.save_torch_file(tensors, os.path.join(folder, file), metadata=metadata)
        return io.NodeOutput(ui={"embeds": [{"filename": file, "subfolder": subfolder, "type": "output"}]})


class LoadEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterLoadEmbeds",
            display_name="IPAdapter Load Embeds",
            category="decoupled_ipadapter",
            description=(
                "Loads image-prompt embeds saved by IPAdapter Save Embeds from ComfyUI's input folder, exactly as "
                "they were saved, or a .ipadpt file of ComfyUI_IPAdapter_plus's IPAdapter Save Embeds (read as "
                "weights only; its negative is made as the reference makes it). Apply IPAdapter checks that they fit "
                "the adapter it is given."
            ),
            inputs=[
                io.Combo.Input(
                    "embeds_file",
                    options=_input_files(),
                    tooltip="A .safetensors file written by IPAdapter Save Embeds in ComfyUI/input, or a .ipadpt file "
                    "of ComfyUI_IPAdapter_plus anywhere under it.",
                ),
                io.ClipVision.Input(
                    "clip_vision",
                    optional=True,
                    tooltip="Only for a .ipadpt file of hidden states (plus adapters): the CLIP vision model that "
                    "encoded them, which makes their negative (its output on an empty picture).",
                ),
            ],
            outputs=[EmbedsType.Output(display_name="embeds", tooltip="The saved embeds; connect to Apply IPAdapter.")],
        )

    @classmethod
    def validate_inputs(cls, embeds_file=None):
        return validation_result(embeds_file, _check_embeds_file)

    @classmethod
    def fingerprint_inputs(cls, embeds_file=None, clip_vision=None):
        """The file's content: a changed file under the same name is loaded again."""
        if embeds_file is None:
            return None
        try:
            with open(embeds_file_path(embeds_file), "rb") as file:
                return hashlib.sha256(file.read()).hexdigest()
        except (IPAdapterError, OSError):  # validation reports it
            return embeds_file

    @classmethod
    def execute(cls, embeds_file, clip_vision=None) -> io.NodeOutput:
        with errors_named_for("IPAdapter Load Embeds"):
            path = embeds_file_path(embeds_file)
            if _is_port_file(embeds_file):
                return io.NodeOutput(read_port_embeds_file(path, clip_vision=clip_vision))
            return io.NodeOutput(read_embeds_file(path))
