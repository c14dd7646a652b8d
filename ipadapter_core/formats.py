"""Reading official IP-Adapter checkpoint files into their nested form.

Two containers exist:
- `.safetensors`: flat keys `image_proj.<name>` and `ip_adapter.<N>.<name>`;
- `.bin` (a torch pickle): `{"image_proj": {...}, "ip_adapter": {...}}`, read with `weights_only=True`, so a pickle
  that carries code is refused instead of run.
Training checkpoints name the same parts `image_proj_model.` and `adapter_modules.`; both spellings are accepted.
"""

import os
import pickle

import safetensors
import safetensors.torch
import torch

from .errors import IPAdapterError

PART_ALIASES = {
    "image_proj": "image_proj",
    "image_proj_model": "image_proj",
    "ip_adapter": "ip_adapter",
    "adapter_modules": "ip_adapter",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

StateDict = dict[str, torch.Tensor]


def read_adapter_file(path: str) -> dict[str, StateDict]:
    """Return `{"image_proj": {...}, "ip_adapter": {...}}` with the file's tensors, unchanged."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise IPAdapterError(f"IP-Adapter file '{path}' does not exist. Put the file in ComfyUI's models/ipadapter folder.")
    if os.path.getsize(path) == 0:
        raise IPAdapterError(f"IP-Adapter file '{name}' is empty (0 bytes): its download did not finish. Download it again.")
    if path.lower().endswith((".safetensors", ".sft")):
        flat = _read_safetensors(path, name)
    elif path.lower().endswith(PICKLE_SUFFIXES):
        flat = _read_pickle(path, name)
    else:
        raise IPAdapterError(
            f"IP-Adapter file '{name}' has an unknown extension. Use the official .safetensors or .bin file."
        )
    return split_into_parts(flat, name)


def split_into_parts(tensors: dict, name: str) -> dict[str, StateDict]:
    """Nest a flat (or already nested) state dict by its first key part, resolving the training-time aliases."""
    parts: dict[str, StateDict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in tensors.items():
        if isinstance(value, dict):
            part = PART_ALIASES.get(key)
            if part is not None:
                parts[part].update({inner: tensor for inner, tensor in value.items() if isinstance(tensor, torch.Tensor)})
            continue
        prefix, _, rest = key.partition(".")
        part = PART_ALIASES.get(prefix)
        if part is not None and rest and isinstance(value, torch.Tensor):
            parts[part][rest] = value
    if not parts["image_proj"] or not parts["ip_adapter"]:
        found = ", ".join(sorted({key.split(".")[0] for key in tensors})[:6]) or "nothing"
        raise IPAdapterError(
            f"'{name}' is not an IP-Adapter file: it has no image_proj and ip_adapter weights (found: {found}). "
            "Load an official IP-Adapter checkpoint (for example ip-adapter_sd15.safetensors) here; "
            "CLIP vision models go to CLIPVisionLoader, checkpoints to the checkpoint loader."
        )
    return parts


def _read_safetensors(path: str, name: str) -> StateDict:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise IPAdapterError(
            f"IP-Adapter file '{name}' cannot be read as safetensors ({error}). "
            "It is probably truncated or damaged: download it again."
        ) from error


def _read_pickle(path: str, name: str) -> dict:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise IPAdapterError(
            f"IP-Adapter file '{name}' was refused: it is a pickle that carries code, not only weights, and loading "
            "it could run that code. Use the official .safetensors version of this adapter."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise IPAdapterError(
            f"IP-Adapter file '{name}' cannot be read ({error}). It is probably truncated or damaged: download it again."
        ) from error
    if not isinstance(content, dict):
        raise IPAdapterError(
            f"'{name}' is not an IP-Adapter file: it holds a {type(content).__name__}, not a dict of weights. "
            "Load an official IP-Adapter checkpoint (for example ip-adapter_sd15.safetensors) here."
        )
    return content
