"""Preparing reference pictures for the image encoder: which square of the picture it sees, how it is resized, and
sharpening.

- crop_position: top, bottom, left, right, center: the largest square at that place of the picture (top and bottom
  are centred across, left and right centred down); pad: the whole picture, centred on a square with black bars.
- The square is resized to size x size with one of PIL's filters (INTERPOLATIONS), in floating point per channel.
- sharpening s in [0, 1]: contrast-adaptive sharpening (the FidelityFX CAS formula): each pixel minus a weight of its
  four neighbours, the weight larger where the local contrast is low and s larger (1/8 + s * (1/5 - 1/8), times the
  square root of the local headroom), then clamped to [0, 1]. Edge pixels see their own value beyond the edge.
  s = 0 turns it off; any s above 0 sharpens at least with 1/8 (as ComfyUI_IPAdapter_plus's node does).
"""

import numpy
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import IPAdapterError

CROP_POSITIONS = ("top", "bottom", "left", "right", "center", "pad")
INTERPOLATIONS = ("LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST")
PREP_SIZE = 224


def _square_box(height: int, width: int, position: str) -> tuple[int, int, int]:
    """(top, left, side) of the crop square."""
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    if position == "top":
        top = 0
    elif position == "bottom":
        top = height - side
    elif position == "left":
        left = 0
    elif position == "right":
        left = width - side
    return top, left, side


def squared(pictures: torch.Tensor, position: str) -> torch.Tensor:
    """[B, H, W, C] -> [B, S, S, C]: the crop square, or the picture padded to a square (pad)."""
    _, height, width, _ = pictures.shape
    if position == "pad":
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        # F.pad's order is last dimension first: C, then W (left, right), then H (top, bottom)
        return F.pad(pictures, (0, 0, left, side - width - left, top, side - height - top))
    top, left, side = _square_box(height, width, position)
    return pictures[:, top : top + side, left : left + side, :]


def resized(pictures: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """[B, H, W, C] -> [B, height, width, C] for `size` = (height, width), with PIL's `interpolation` filter, each
    channel a 32-bit float image."""
    height, width = size
    resample = Image.Resampling[interpolation]
    out = []
    for picture in pictures.float().cpu().numpy():  # [H, W, C]
        channels = [numpy.asarray(Image.fromarray(numpy.ascontiguousarray(picture[..., c]), mode="F")
                                  .resize((width, height), resample=resample)) for c in range(picture.shape[-1])]  # fmt: skip
        out.append(numpy.stack(channels, axis=-1))  # [height, width, C]
    return torch.from_numpy(numpy.stack(out))


def sharpened(pictures: torch.Tensor, amount: float) -> torch.Tensor:
    """Contrast-adaptive sharpening of [B, H, W, C] (module docstring)."""
    image = pictures.permute(0, 3, 1, 2)  # [B, C, H, W]
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    height, width = image.shape[2:]

    def at(dy: int, dx: int) -> torch.Tensor:
        return padded[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    cross = torch.stack([at(-1, 0), at(0, -1), at(0, 0), at(0, 1), at(1, 0)])  # [5, B, C, H, W]
    diagonal = torch.stack([at(-1, -1), at(-1, 1), at(1, -1), at(1, 1)])  # [4, B, C, H, W]
    low = cross.amin(0) + diagonal.amin(0)  # soft minimum, in [0, 2]
    high = cross.amax(0) + diagonal.amax(0)  # soft maximum, in [0, 2]
    headroom = torch.where(high > 0, torch.minimum(low, 2 - high) / high, torch.zeros_like(high)).clamp(0, 1)
    weight = -headroom.sqrt() * (1 / 8 + amount * (1 / 5 - 1 / 8))
    neighbours = at(-1, 0) + at(0, -1) + at(0, 1) + at(1, 0)
    out = (neighbours * weight + image) / (1 + 4 * weight)
    return out.clamp(0, 1).permute(0, 2, 3, 1)  # [B, H, W, C]


def check_pictures_and_sharpening(pictures: torch.Tensor, sharpening: float) -> None:
    """An IPAdapterError unless `pictures` is a non-empty [B, H, W, C] batch and 0 <= sharpening <= 1."""
    if not 0.0 <= sharpening <= 1.0:
        raise IPAdapterError(f"the sharpening must be between 0 and 1, not {sharpening}.")
    if pictures.ndim != 4 or pictures.shape[0] == 0 or min(pictures.shape[1:3]) == 0:
        raise IPAdapterError(f"the image must be a batch of pictures [B, H, W, C], not a tensor of {tuple(pictures.shape)}.")


def prepared_pictures(pictures: torch.Tensor, *, crop_position: str, interpolation: str, sharpening: float,
                      size: int = PREP_SIZE) -> torch.Tensor:  # fmt: skip
    """[B, H, W, C] -> [B, size, size, C]: cropped (or padded), resized and sharpened (module docstring)."""
    if crop_position not in CROP_POSITIONS:
        raise IPAdapterError(f"'{crop_position}' is not a crop position; use one of: {', '.join(CROP_POSITIONS)}.")
    if interpolation not in INTERPOLATIONS:
        raise IPAdapterError(f"'{interpolation}' is not an interpolation; use one of: {', '.join(INTERPOLATIONS)}.")
    check_pictures_and_sharpening(pictures, sharpening)
    prepared = resized(squared(pictures, crop_position), (size, size), interpolation)
    if sharpening > 0:
        prepared = sharpened(prepared, sharpening)
    return prepared.to(pictures.dtype)
