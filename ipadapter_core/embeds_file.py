"""Image-prompt embeds as a `.safetensors` file, so an encoding can be saved once and applied later.

The file holds two tensors, `positive` and `negative` (the ImagePromptEmbeds tensors, stored as they are: same dtype,
same values, so a round trip is bit-exact; FaceID Plus embeds add `face_positive` and `face_negative`), and string metadata: `decoupled_ipadapter_embeds` (the format version),
`clip_output`, `adapter_variant` and `image_encoder` (where they came from; empty when unknown). Writers may add
more metadata (ComfyUI's `prompt` and `workflow`); readers ignore it. A file without our format key is refused.

The port's (ComfyUI_IPAdapter_plus) `.ipadpt` files are read too: `torch.save` of ONE tensor, a positive or a negative
embedding without metadata, `[N, E]` image embeds or `[N, S, E]` penultimate hidden states. They are read as weights
only (a pickle that carries code is refused, never run); the tensor is the positive, and the negative is the
reference's: zeros for image embeds, the image encoder's output on an all-zero normalised picture for hidden states
(so those need the encoder). Where they came from is unknown (adapter_variant and image_encoder empty).
"""

import os

import safetensors
import torch

from .encoders import ENCODER_FILES, FACE_EMBEDDING, IMAGE_EMBEDS, PENULTIMATE, SIGLIP_POOLED, VIT_H
from .embeds import ImagePromptEmbeds, make_embeds
from .encoding import unconditional_output
from .errors import IPAdapterError
from .formats import WeightsFileKind, read_pickle

FORMAT_KEY = "decoupled_ipadapter_embeds"
FORMAT_VERSION = 1
TENSOR_NAMES = ("positive", "negative")
FACE_TENSOR_NAMES = ("face_positive", "face_negative")  # FaceID Plus only
CLIP_OUTPUTS = (IMAGE_EMBEDS, PENULTIMATE, SIGLIP_POOLED, FACE_EMBEDDING)
SAVE_HINT = "Save embeds with IPAdapter Save Embeds and put the file in ComfyUI's input folder."
PORT_EXTENSION = ".ipadpt"
PORT_EMBEDS_FILE = WeightsFileKind(
    label="Embeds file",
    where_to_put="Put it in ComfyUI's input folder.",
    what_to_use="Encode the reference again with IPAdapter Encode Image and save it with IPAdapter Save Embeds.",
    when_damaged="save the embeds again",
)
CLIP_OUTPUT_OF_PORT_RANK = {2: IMAGE_EMBEDS, 3: PENULTIMATE}


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


def read_port_embeds_tensor(path: str) -> torch.Tensor:
    """The one tensor of a port `.ipadpt` file, `[N, E]` or `[N, S, E]`, read as weights only; anything else is
    refused, naming the file."""
    name = os.path.basename(path)
    _check_present(path)
    content = read_pickle(path, kind=PORT_EMBEDS_FILE)
    if not isinstance(content, torch.Tensor):
        raise IPAdapterError(
            f"'{name}' holds a {type(content).__name__}, not the one tensor ComfyUI_IPAdapter_plus's IPAdapter Save Embeds "
            f"writes: it is not an embeds file. {PORT_EMBEDS_FILE.what_to_use}"
        )
    if not content.is_floating_point() or content.dim() not in CLIP_OUTPUT_OF_PORT_RANK or content.numel() == 0:
        raise IPAdapterError(
            f"'{name}' holds a {content.dtype} tensor of shape {list(content.shape)}; port embeds are floating point, "
            f"[images, width] image embeds or [images, tokens, width] hidden states. {PORT_EMBEDS_FILE.what_to_use}"
        )
    return content


def read_port_embeds_file(path: str, *, clip_vision=None) -> ImagePromptEmbeds:
    """A port `.ipadpt` file as embeds: its tensor is the positive; the negative is zeros (image embeds) or
    `clip_vision`'s output on an all-zero normalised picture (hidden states: refused without `clip_vision`)."""
    name = os.path.basename(path)
    positive = read_port_embeds_tensor(path)  # [N, E] or [N, S, E]
    clip_output = CLIP_OUTPUT_OF_PORT_RANK[positive.dim()]
    if clip_output == IMAGE_EMBEDS:
        negative = torch.zeros_like(positive[:1])  # [1, E]
    else:
        if clip_vision is None:
            raise IPAdapterError(
                f"'{name}' holds penultimate hidden states {list(positive.shape)}: their negative is the image encoder's "
                f"output on an empty picture. Connect the CLIP vision model that encoded them (for the plus adapters "
                f"{ENCODER_FILES[VIT_H]}, with CLIPVisionLoader) to clip_vision."
            )
        negative = unconditional_output(clip_vision, positive, clip_output=clip_output)  # [1, S', E']
        if negative.shape[1:] != positive.shape[1:]:
            raise IPAdapterError(
                f"'{name}' holds hidden states of {positive.shape[1]} tokens of width {positive.shape[2]}, but the CLIP "
                f"vision model connected to clip_vision gives {negative.shape[1]} of width {negative.shape[2]}. "
                "Connect the one that encoded them."
            )
    return make_embeds(positive, negative, clip_output=clip_output)


def _check_present(path: str) -> None:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise IPAdapterError(f"Embeds file '{name}' does not exist ({path}). {SAVE_HINT}")
    if os.path.getsize(path) == 0:
        raise IPAdapterError(f"Embeds file '{name}' is empty (0 bytes). {SAVE_HINT}")


def _opened(path: str):
    """`safetensors.safe_open` (a context manager), with a missing, empty or unreadable file refused in our words."""
    name = os.path.basename(path)
    _check_present(path)
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
