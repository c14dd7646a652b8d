"""The training set: pictures and their captions, checked, then encoded once by the frozen encoders.

Every picture needs a caption (ComfyUI's Load Image and Text Dataset from Folder gives an empty one to a picture
without its `.txt` file), and all pictures one size (ComfyUI's dataset nodes resize and crop them).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..encoding import encode_images, unconditional_output
from ..errors import IPAdapterError

EMPTY_CAPTION = ""


@dataclass(frozen=True)
class Caption:
    """One encoded caption: the text tokens `[1, L, C]` and the rest of ComfyUI's conditioning (pooled output…)."""

    cross_attn: torch.Tensor
    options: dict


@dataclass(frozen=True)
class TrainingData:
    latents: torch.Tensor  # [N, C, h, w], in the model's latent space (process_latent_in)
    image_inputs: torch.Tensor  # [N, E] image embeds or [N, S, E] hidden states: what the projection reads
    unconditional_image: torch.Tensor  # [1, …]: the input of a dropped image (the reference's negative)
    captions: tuple[Caption, ...]  # one per picture
    empty_caption: Caption  # the input of a dropped caption

    @property
    def size(self) -> int:
        return self.latents.shape[0]


def checked_pictures(images: Sequence[torch.Tensor], captions: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """The pictures as one IMAGE batch `[N, H, W, 3]` and their captions, or an error saying what to fix."""
    rows = [row for batch in images for row in (batch if batch.dim() == 4 else batch[None])]  # each [H, W, C]
    if not rows:
        raise IPAdapterError(
            "the dataset is empty: no pictures came in. Point Load Image and Text Dataset from Folder at a folder of "
            "ComfyUI's input directory holding pictures (.png, .jpg, .webp) and a .txt caption beside each."
        )
    if len(captions) != len(rows):
        raise IPAdapterError(
            f"the dataset has {len(rows)} pictures but {len(captions)} captions; give one caption per picture, in "
            "the same order."
        )
    uncaptioned = [index + 1 for index, caption in enumerate(captions) if not caption.strip()]
    if uncaptioned:
        raise IPAdapterError(
            f"picture {', '.join(map(str, uncaptioned[:10]))} of {len(rows)} has no caption (an empty caption, or no "
            ".txt file of the same name beside it). Write a caption for every picture: training learns from the "
            "picture what its caption does not say."
        )
    sizes = sorted({tuple(row.shape[:2]) for row in rows})
    if len(sizes) > 1:
        raise IPAdapterError(
            f"the pictures have {len(sizes)} different sizes ({', '.join(f'{w}x{h}' for h, w in sizes[:4])}…); "
            "training needs one size. Resize and crop them first (Resize Images by Shorter Edge, then Center Crop "
            "Images)."
        )
    return torch.stack([row[..., :3] for row in rows]), list(captions)  # [N, H, W, 3]


def encode_training_data(
    pictures: torch.Tensor,
    captions: Sequence[str],
    *,
    encode_latents: Callable[[torch.Tensor], torch.Tensor],
    clip_vision,
    clip_output: str,
    encode_text: Callable[[str], Caption],
) -> TrainingData:
    """Encode the pictures `[N, H, W, 3]` into latents (`encode_latents`: VAE encode and the model's latent scaling)
    and CLIP vision output, and each distinct caption once (no gradients: the encoders are frozen)."""
    with torch.no_grad():
        return _encode(pictures, captions, encode_latents, clip_vision, clip_output, encode_text)


def _encode(pictures, captions, encode_latents, clip_vision, clip_output, encode_text) -> TrainingData:
    image_inputs = encode_images(clip_vision, pictures, clip_output=clip_output)
    encoded = {caption: encode_text(caption) for caption in dict.fromkeys([*captions, EMPTY_CAPTION])}
    return TrainingData(
        latents=encode_latents(pictures).float(),
        image_inputs=image_inputs.float(),
        unconditional_image=unconditional_output(clip_vision, image_inputs, clip_output=clip_output).float(),
        captions=tuple(encoded[caption] for caption in captions),
        empty_caption=encoded[EMPTY_CAPTION],
    )
