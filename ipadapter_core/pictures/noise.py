"""Noise pictures to use as the image prompt's negative: the reference degraded (or a black square) so that the
negative shares its colours but not its content, and classifier-free guidance pushes towards what the reference
shows.

Pictures are ComfyUI IMAGE tensors, [B, H, W, C] in [0, 1]. Every kind works on a NOISE_SIZE square: the reference
is centre-cropped to a square and resized (bicubic, antialiased), as the image encoders see it.
- fade: (1 - s) * picture + s * U(0, 1) per value.
- dissolve: each pixel is replaced by a random colour (U(0, 1) per channel) with probability s.
- gaussian: picture + s * N(0, 1) per value.
- shuffle: the picture warped by a random displacement field (each pixel moved by up to SHUFFLE_REACH pixels in x and
  y, the field smoothed by a Gaussian of sigma (1 - s) * SHUFFLE_SMOOTHING pixels: s = 1 scatters pixels on their
  own, lower s moves whole regions), turned upside down and mirrored, then `w * (1 - n) + n` with
  n = 0.75 * s * N(0, 1).
The result is clamped to [0, 1], then blurred by a Gaussian of `blur` pixels (made odd; sigma as torchvision's
default for that kernel size). The random draws come from `seed`, so a seed gives the same picture every time.
"""

import torch
import torch.nn.functional as F

from ..errors import IPAdapterError

NOISE_KINDS = ("fade", "dissolve", "gaussian", "shuffle")
NOISE_SIZE = 224
SHUFFLE_REACH = 75.0
SHUFFLE_SMOOTHING = 3.5
SHUFFLE_NOISE = 0.75


def _square(pictures: torch.Tensor, size: int) -> torch.Tensor:
    """[B, H, W, C] -> [B, C, size, size]: the centre square, resized."""
    _, height, width, _ = pictures.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pictures[:, top : top + side, left : left + side, :].permute(0, 3, 1, 2)  # [B, C, side, side]
    return F.interpolate(square, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(pictures: torch.Tensor, *, kernel_size: int, sigma: float) -> torch.Tensor:
    """[B, C, H, W] blurred separably, edges reflected."""
    kernel = _gaussian_kernel(kernel_size, sigma).to(pictures)
    channels = pictures.shape[1]
    pad = kernel_size // 2
    rows = kernel.view(1, 1, 1, kernel_size).repeat(channels, 1, 1, 1)  # [C, 1, 1, k]
    columns = kernel.view(1, 1, kernel_size, 1).repeat(channels, 1, 1, 1)  # [C, 1, k, 1]
    blurred = F.conv2d(F.pad(pictures, (pad, pad, 0, 0), mode="reflect"), rows, groups=channels)
    return F.conv2d(F.pad(blurred, (0, 0, pad, pad), mode="reflect"), columns, groups=channels)


def _blur_sigma(kernel_size: int) -> float:
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def _shuffled(square: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    batch, _, size, _ = square.shape
    displacement = torch.rand((batch, 2, size, size), generator=generator) * 2 - 1  # [B, 2, H, W], in [-1, 1]
    sigma = (1 - strength) * SHUFFLE_SMOOTHING
    if sigma > 0:
        kernel_size = 2 * int(4 * sigma + 0.5) + 1
        displacement = gaussian_blur(displacement, kernel_size=min(kernel_size, 2 * size - 1), sigma=sigma)
    displacement = displacement * SHUFFLE_REACH * 2 / size  # pixels -> grid_sample's [-1, 1] units
    axis = torch.linspace(-1, 1, size)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0) + displacement.permute(0, 2, 3, 1)  # [B, H, W, 2]
    warped = F.grid_sample(square, grid.to(square), mode="bilinear", padding_mode="reflection", align_corners=True)
    warped = warped.flip(dims=(2, 3))  # upside down and mirrored
    noise = torch.randn(warped.shape, generator=generator) * (SHUFFLE_NOISE * strength)
    return warped * (1 - noise) + noise


def noise_pictures(kind: str, *, strength: float, blur: int, seed: int, image: torch.Tensor | None = None) -> torch.Tensor:
    """[B, NOISE_SIZE, NOISE_SIZE, 3] noise pictures (module docstring), one per picture of `image`, or one made from
    a black square without it."""
    if kind not in NOISE_KINDS:
        raise IPAdapterError(f"'{kind}' is not a noise type; use one of: {', '.join(NOISE_KINDS)}.")
    if not 0.0 <= strength <= 1.0:
        raise IPAdapterError(f"the noise strength must be between 0 and 1, not {strength}.")
    if blur < 0:
        raise IPAdapterError(f"the blur must be 0 or more pixels, not {blur}.")
    if image is None:
        square = torch.zeros((1, 3, NOISE_SIZE, NOISE_SIZE))
    else:
        if image.ndim != 4 or image.shape[0] == 0 or min(image.shape[1:3]) == 0:
            raise IPAdapterError(f"the image must be a batch of pictures [B, H, W, C], not a tensor of {tuple(image.shape)}.")
        square = _square(image[..., :3].float().cpu(), NOISE_SIZE)
    generator = torch.Generator().manual_seed(seed)
    if kind == "fade":
        noisy = square * (1 - strength) + torch.rand(square.shape, generator=generator) * strength
    elif kind == "dissolve":
        batch, _, height, width = square.shape
        replaced = (torch.rand((batch, 1, height, width), generator=generator) < strength).float()  # [B, 1, H, W]
        noisy = square * (1 - replaced) + torch.rand(square.shape, generator=generator) * replaced
    elif kind == "gaussian":
        noisy = square + torch.randn(square.shape, generator=generator) * strength
    else:
        noisy = _shuffled(square, strength, generator)
    noisy = noisy.clamp(0, 1)
    if blur > 0:
        kernel_size = blur if blur % 2 else blur + 1
        noisy = gaussian_blur(noisy, kernel_size=kernel_size, sigma=_blur_sigma(kernel_size))
    return noisy.permute(0, 2, 3, 1).contiguous()  # [B, H, W, C]
