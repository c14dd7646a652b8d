"""Image-prompt embeds as a `.safetensors` file, so an encoding can be saved once and applied later.

The file holds two tensors, `positive` and `negative` (the ImagePromptEmbeds tensors, stored as they are: same dtype,
same values, so a round trip is bit-exact; FaceID Plus embeds add `face_positive` and `face_negative`), and string metadata: `decoupled_ipadapter_embeds` (the format version),
`clip_output`, `adapter_variant` and `image_encoder` (where they came from; empty when unknown). Writers may add
more metadata (ComfyUI's `prompt` and `workflow`); readers ignore it. A file without our format key is refused.
"""

import os

import safetensors
import torch

from .encoders import FACE_EMBEDDING, IMAGE_EMBEDS, PENULTIMATE, SIGLIP_POOLED
from .embeds import ImagePromptEmbeds, make_embeds
from .errors import IPAdapterError

FORMAT_KEY = "decoupled_ipadapter_embeds"
FORMAT_VERSION = 1
TENSOR_NAMES = ("positive", "negative")
FACE_TENSOR_NAMES = ("face_positive", "face_negative")  # FaceID Plus only
CLIP_OUTPUTS = (IMAGE_EMBEDS, PENULTIMATE, SIGLIP_POOLED, FACE_EMBEDDING)
SAVE_HINT = "Save embeds with IPAdapter Save Embeds and put the file in ComfyUI's input folder."


def embeds_file_content(embeds: ImagePromptEmbeds) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of the file that holds `embeds`."""
    names = TENSOR_NAMES + (FACE_TENSOR_NAMES if embeds.face_positive is not None else ())
    tensors = {name: getattr(embeds, name).detach().cpu().contiguous() for name in names}
    metadata = {
        FORMAT_KEY: str(FORMAT_VERSION),
        "clip_output": embeds.clip_output,
        "adapter_variant": embeds.adapter_variant,
        "image_encoder": embeds.image_encoder,
    }
    return tensors, metadata


def read_embeds_metadata(path: str) -> dict[str, str]:
    """The metadata of an embeds file, read from its header only (cheap: for checks before a prompt runs)."""
    with _opened(path) as opened:
        return _checked_metadata(opened.metadata() or {}, os.path.basename(path))


def read_embeds_file(path: str) -> ImagePromptEmbeds:
    name = os.path.basename(path)
    with _opened(path) as opened:
        metadata = _checked_metadata(opened.metadata() or {}, name)
        keys = set(opened.keys())
        if keys not in (set(TENSOR_NAMES), set(TENSOR_NAMES + FACE_TENSOR_NAMES)):
            raise IPAdapterError(
                f"'{name}' holds the tensors {sorted(keys)}, not {list(TENSOR_NAMES)}: it is damaged. {SAVE_HINT}"
            )
        positive, negative = (opened.get_tensor(tensor) for tensor in TENSOR_NAMES)
        faces = {tensor: opened.get_tensor(tensor) for tensor in FACE_TENSOR_NAMES if tensor in keys}
    if not (positive.is_floating_point() and negative.is_floating_point()):
        raise IPAdapterError(f"'{name}' holds {positive.dtype} embeds, not floating point: it is damaged. {SAVE_HINT}")
    try:
        return make_embeds(
            positive,
            negative,
            clip_output=metadata["clip_output"],
            adapter_variant=metadata.get("adapter_variant", ""),
            image_encoder=metadata.get("image_encoder", ""),
            **faces,
        )
    except IPAdapterError as error:
        raise IPAdapterError(f"'{name}' holds embeds that do not fit together: {error}") from error


def _opened(path: str):
    """`safetensors.safe_open` (a context manager), with a missing, empty or unreadable file refused in our words."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise IPAdapterError(f"Embeds file '{name}' does not exist ({path}). {SAVE_HINT}")
    if os.path.getsize(path) == 0:
        raise IPAdapterError(f"Embeds file '{name}' is empty (0 bytes). {SAVE_HINT}")
    try:
        return safetensors.safe_open(path, framework="pt", device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise IPAdapterError(
            f"'{name}' cannot be read as safetensors ({error}): it is not an embeds file, or it is damaged. {SAVE_HINT}"
        ) from error


def _checked_metadata(metadata: dict[str, str], name: str) -> dict[str, str]:
    version = metadata.get(FORMAT_KEY)
    if version is None:
        raise IPAdapterError(
            f"'{name}' is a safetensors file but not Decoupled IP-Adapter embeds (it has no '{FORMAT_KEY}' entry; "
            "models go to their loaders, and other packs' embeds files are not read here). " + SAVE_HINT
        )
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise IPAdapterError(
            f"'{name}' holds embeds in format version {version}; this version of the pack reads up to "
            f"{FORMAT_VERSION}. Update the pack, or save the embeds again."
        )
    if metadata.get("clip_output") not in CLIP_OUTPUTS:
        raise IPAdapterError(
            f"'{name}' says its embeds are '{metadata.get('clip_output')}', not one of {', '.join(CLIP_OUTPUTS)}: it is "
            f"damaged. {SAVE_HINT}"
        )
    return metadata
