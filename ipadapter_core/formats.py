"""Reading official IP-Adapter checkpoint files into their nested form.

Two containers exist:
- `.safetensors`: flat keys `image_proj.<name>` and `ip_adapter.<N>.<name>`;
- `.bin` (a torch pickle): `{"image_proj": {...}, "ip_adapter": {...}}`, read with `weights_only=True`, so a pickle
  that carries code is refused instead of run.
Training checkpoints name the same parts `image_proj_model.` and `adapter_modules.`; both spellings are accepted.
"""

import os
import pickle
from dataclasses import dataclass

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
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightsFileKind:
    """How the errors of one kind of weights file name it and what they tell the user to do."""

    label: str  # "IP-Adapter file"
    where_to_put: str  # "Put the file in ComfyUI's models/ipadapter folder."
    what_to_use: str  # which files to use instead of an unknown extension or a code-carrying pickle
    when_damaged: str = "download it again"  # what to do about a truncated or damaged file


IPADAPTER_FILE = WeightsFileKind(
    label="IP-Adapter file",
    where_to_put="Put the file in ComfyUI's models/ipadapter folder.",
    what_to_use="Use the official .safetensors version of this adapter.",
)


def adapter_parts(content, name: str) -> dict[str, StateDict]:
    """`{"image_proj": {...}, "ip_adapter": {...}}` with a UNet IP-Adapter file's tensors (its content as
    `read_weights_file` returns it), unchanged."""
    if not isinstance(content, dict):
        raise IPAdapterError(
            f"'{name}' is not an IP-Adapter file: it holds a {type(content).__name__}, not a dict of weights. "
            "Load an official IP-Adapter checkpoint (for example ip-adapter_sd15.safetensors) here."
        )
    return split_into_parts(content, name)


def read_weights_file(path: str, *, kind: WeightsFileKind):
    """The content of a `.safetensors` file (a flat dict of tensors) or of a torch pickle read with weights_only=True
    (whatever it holds, without running code). Missing, empty, truncated and code-carrying files raise IPAdapterError
    in `kind`'s words."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise IPAdapterError(f"{kind.label} '{path}' does not exist. {kind.where_to_put}")
    if os.path.getsize(path) == 0:
        raise IPAdapterError(f"{kind.label} '{name}' is empty (0 bytes): its download did not finish. Download it again.")
    if path.lower().endswith(SAFETENSORS_SUFFIXES):
        return _read_safetensors(path, name, kind)
    if path.lower().endswith(PICKLE_SUFFIXES):
        return read_pickle(path, kind=kind)
    raise IPAdapterError(f"{kind.label} '{name}' has an unknown extension. {kind.what_to_use}")


def assign_weights(module: torch.nn.Module, weights: StateDict, *, mismatch: str, fix: str) -> None:
    """Give a module built on the meta device a file's tensors as they are (`assign=True`: no copy, nothing randomly
    initialised). A tensor the module does not expect, one it lacks, or a parameter left on the meta device raises
    IPAdapterError: `mismatch` says what does not fit, `fix` what the user can do."""
    try:
        module.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        raise IPAdapterError(f"{mismatch} ({error}). {fix}") from error
    on_meta = [key for key, value in module.state_dict(keep_vars=True).items() if value.is_meta]
    if on_meta:
        raise IPAdapterError(f"{mismatch}: {on_meta[:3]} got no weights. {fix}")


def with_adapter_weights(module: torch.nn.Module, weights: StateDict, *, name: str, variant: str, fix: str) -> torch.nn.Module:
    """`module` (built on the meta device) with the adapter file `name`'s tensors (`assign_weights`, refused as a file
    that does not fit the `variant` it was detected as), in eval mode and without gradients."""
    assign_weights(module, weights, mismatch=f"'{name}' looks like {variant} but its weights do not fit that layout", fix=fix)
    return module.eval().requires_grad_(False)


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


def _read_safetensors(path: str, name: str, kind: WeightsFileKind) -> StateDict:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise IPAdapterError(
            f"{kind.label} '{name}' cannot be read as safetensors ({error}). "
            f"It is probably truncated or damaged: {kind.when_damaged}."
        ) from error


def read_pickle(path: str, *, kind: WeightsFileKind):
    """Whatever a torch pickle holds, read with weights_only=True (a pickle that carries code is refused, never run);
    an unreadable file raises IPAdapterError in `kind`'s words."""
    name = os.path.basename(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise IPAdapterError(
            f"{kind.label} '{name}' was refused: it is a pickle that carries code, not only weights, and loading "
            f"it could run that code. {kind.what_to_use}"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise IPAdapterError(
            f"{kind.label} '{name}' cannot be read ({error}). It is probably truncated or damaged: {kind.when_damaged}."
        ) from error
