"""Attention masks brought to a layer's queries: against diffusers' own `IPAdapterMaskProcessor.downsample` where
the mask's aspect is the latent's (or the latent is not known), stretched to the layer's grid where it is not.

Hard and soft masks, query counts of every UNet level from 1 to 4096, several masks (one per image) at once.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.masks import downsample_mask, latent_grid, mask_batch, mask_grid


def hard_mask(height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[:, :, : width // 2] = 1.0  # the left half
    return mask


def soft_mask(height: int, width: int) -> torch.Tensor:
    rows = torch.linspace(-1, 1, height)[:, None]
    columns = torch.linspace(-1, 1, width)[None, :]
    return torch.exp(-3 * (rows**2 + (columns - 0.3) ** 2)).unsqueeze(0)  # a blob with soft edges, 0..1


def diffusers_downsample(mask: torch.Tensor, queries: int) -> torch.Tensor:
    """diffusers' per-image call, as IPAdapterAttnProcessor2_0 makes it: `[1, H, W]` → `[1, queries]`."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its aspect-ratio warning for the padded cases
        return IPAdapterMaskProcessor.downsample(mask, batch_size=1, num_queries=queries, value_embed_dim=1)[..., 0]


# (mask height, mask width, latent height, latent width): picture size ÷ 8 is the latent; every UNet level halves it
MATCHING = [
    (512, 512, 64, 64),  # square SD1.5
    (1024, 1024, 128, 128),  # square SDXL (levels down to 32×32)
    (768, 512, 96, 64),  # portrait, mask matches the latent
    (1216, 832, 152, 104),  # SDXL's 1216×832 (levels down to 19×13)
]
DIFFERING = [
    (512, 1024, 64, 64),  # wide mask on a square latent
    (300, 200, 40, 40),  # odd sizes, tall mask on a square latent
    (64, 64, 8, 12),  # square mask on a wide latent
    (832, 832, 104, 152),  # square mask on 832×1216 (odd levels: 13 → 7 rows)
]


def levels(latent_height: int, latent_width: int):
    """(rows, columns) of each UNet level: the latent halved, rounding up, as ComfyUI's stride-2 convolutions."""
    rows, columns = latent_height, latent_width
    for _ in range(4):
        yield rows, columns
        rows, columns = -(-rows // 2), -(-columns // 2)


@pytest.mark.parametrize("make", [hard_mask, soft_mask], ids=["hard", "soft"])
@pytest.mark.parametrize(("height", "width", "latent_height", "latent_width"), MATCHING + DIFFERING)
def test_without_the_latent_downsampling_matches_diffusers_at_every_level(make, height, width, latent_height, latent_width):
    mask = make(height, width)
    for rows, columns in levels(latent_height, latent_width):
        ours = downsample_mask(mask, queries=rows * columns)
        assert ours.shape == (1, rows * columns)
        assert torch.equal(ours, diffusers_downsample(mask, rows * columns)), (rows, columns)


@pytest.mark.parametrize("make", [hard_mask, soft_mask], ids=["hard", "soft"])
@pytest.mark.parametrize(("height", "width", "latent_height", "latent_width"), MATCHING)
def test_a_mask_with_the_latents_aspect_gives_diffusers_result_at_every_level(make, height, width, latent_height, latent_width):
    mask = make(height, width)
    for rows, columns in levels(latent_height, latent_width):
        ours = downsample_mask(mask, queries=rows * columns, latent_size=(latent_height, latent_width))
        assert torch.equal(ours, diffusers_downsample(mask, rows * columns)), (rows, columns)


@pytest.mark.parametrize(("height", "width", "latent_height", "latent_width"), DIFFERING)
def test_a_mask_of_another_aspect_is_stretched_to_the_picture_at_every_level(height, width, latent_height, latent_width):
    mask = hard_mask(height, width)  # the left half
    for rows, columns in levels(latent_height, latent_width):
        ours = downsample_mask(mask, queries=rows * columns, latent_size=(latent_height, latent_width))
        grid = ours.reshape(rows, columns)  # the layer's token order: row by row
        assert torch.equal(grid, grid[:1].expand(rows, columns)), "every row alike: no shear"
        left, right = grid[0, : columns // 2 - 1], grid[0, columns // 2 + 1 :]
        assert (left > 0.9).all() and (right < 0.1).all(), (rows, columns, grid[0])


def test_the_layer_grid_is_the_latent_halved_rounding_up():
    assert latent_grid(104, 152, queries=104 * 152) == (104, 152)
    assert latent_grid(104, 152, queries=13 * 19) == (13, 19)
    assert latent_grid(13, 19, queries=7 * 10) == (7, 10)
    assert latent_grid(104, 152, queries=126 * 125) is None  # no level has that many queries


def test_a_mask_whose_aspect_differs_is_zero_padded_at_the_end():
    mask = torch.ones(1, 512, 1024)
    rows, columns = mask_grid(512, 1024, queries=64)
    assert (rows, columns) == (6, 10)  # sqrt(64 / 2) = 5.66 → 5, 64 % 5 ≠ 0 → 6 rows, 64 // 6 = 10 columns
    ours = downsample_mask(mask, queries=64)
    assert torch.equal(ours[0, 60:], torch.zeros(4)) and torch.allclose(ours[0, :60], torch.ones(60))


def test_several_masks_are_downsampled_each_as_diffusers_does_one():
    masks = torch.cat([hard_mask(96, 64), soft_mask(96, 64), 1 - hard_mask(96, 64)])  # [3, H, W]: one per image
    for queries in (384, 96, 24, 6):
        ours = downsample_mask(masks, queries=queries)
        expected = torch.cat([diffusers_downsample(masks[index : index + 1], queries) for index in range(3)])
        assert torch.equal(ours, expected), queries


def test_fewer_queries_than_the_aspect_give_one_row_where_diffusers_divides_by_zero():
    mask = soft_mask(64, 192)  # aspect 3 > 2 queries
    with pytest.raises(ZeroDivisionError):
        diffusers_downsample(mask, 2)
    expected = F.interpolate(mask.unsqueeze(0), size=(1, 2), mode="bicubic").reshape(1, 2)
    assert torch.equal(downsample_mask(mask, queries=2), expected)


def test_mask_batch_takes_comfyui_masks_and_refuses_other_shapes():
    assert mask_batch(torch.ones(8, 12)).shape == (1, 8, 12)
    half = torch.ones(2, 8, 12, dtype=torch.float16)
    assert mask_batch(half).dtype == torch.float32 and mask_batch(half).shape == (2, 8, 12)
    for shape in [(1, 1, 8, 12), (8,), (0, 8, 12), (1, 0, 12)]:
        with pytest.raises(IPAdapterError, match=r"attn_mask has shape .* connect a MASK"):
            mask_batch(torch.ones(shape))
