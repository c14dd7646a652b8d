"""The one place the pack imports open_clip_torch (a requirement of the pack, used only by the OpenCLIP nodes)."""

import importlib

from ..ipadapter_core.errors import IPAdapterError


def import_open_clip(submodule: str):
    """`open_clip.<submodule>`, or an error that says how to install it (it is in the pack's requirements.txt)."""
    try:
        return importlib.import_module(f"open_clip.{submodule}")
    except ImportError as error:
        raise IPAdapterError(
            f"The OpenCLIP nodes need the open_clip_torch package ({error}). Install the pack's requirements into "
            "ComfyUI's Python: python -m pip install -r custom_nodes/<this pack>/requirements.txt"
        ) from error
