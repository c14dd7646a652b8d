"""IPAdapter Tiles (ipadapter_core/pictures/tiles.py): the tiling of square, near-square, wide, very wide and tall
pictures, the tiles as crops of the resized picture, the masks of the tiles' regions (with a user's mask), sharpening,
the tile-major batch order; and Apply's grouped masks: M masks for M·G images act as M separate Applies."""

import pytest
import torch
import torch.nn.functional as F
from comfy_sampling_helpers import call_patch, layer_inputs, linear_adapter, replace_patch
from tiny_models import tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.pictures.prep import resized, sharpened
from decoupled_ipadapter.ipadapter_core.pictures.tiles import TILE_SIZE, tile_layout, tiles_and_masks
from decoupled_ipadapter.ipadapter_core.unet.blocks import unet_transformer_modules


def picture(height: int, width: int, *, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """[B, H, W, 3]: smooth colour gradients plus noise, in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.linspace(0, 1, height).view(1, height, 1, 1)
    columns = torch.linspace(0, 1, width).view(1, 1, width, 1)
    ramps = torch.cat([rows.expand(1, height, width, 1), columns.expand(1, height, width, 1), (rows * columns)], dim=-1)
    return (0.6 * ramps + 0.4 * torch.rand(batch, height, width, 3, generator=generator)).clamp(0, 1)


# (height, width) -> (centre part kept (h, w), resized to (h, w), tile starts down, tile starts across)
LAYOUTS = {
    "square": ((300, 300), ((300, 300), (512, 512), [0, 256], [0, 256])),
    "near-square": ((400, 480), ((400, 400), (512, 512), [0, 256], [0, 256])),
    "3:4, just outside near-square": ((300, 400), ((300, 400), (256, 341), [0], [0, 85])),
    "wide 3:2": ((300, 450), ((300, 450), (256, 384), [0], [0, 128])),
    "wide 2:1": ((200, 400), ((200, 400), (256, 512), [0], [0, 256])),
    "tall 5:2": ((500, 200), ((500, 200), (640, 256), [0, 192, 384], [0])),
    "very wide 6:1": ((100, 600), ((100, 400), (256, 1024), [0], [0, 256, 512, 768])),
    "very tall 5:1": ((500, 100), ((400, 100), (1024, 256), [0, 256, 512, 768], [0])),
    "a line of pixels": ((1, 2000), ((1, 4), (256, 1024), [0], [0, 256, 512, 768])),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_the_layout_of_each_shape(name):
    (height, width), (crop, size, starts_down, starts_across) = LAYOUTS[name]
    layout = tile_layout(height, width)
    assert (layout.crop, layout.size) == (crop, size)
    assert layout.offsets == tuple((top, left) for top in starts_down for left in starts_across)
    assert 1 <= len(layout.offsets) <= 4
    for length, starts in ((size[0], starts_down), (size[1], starts_across)):
        assert starts[-1] + TILE_SIZE == length  # the last tile ends at the edge
        steps = {b - a for a, b in zip(starts, starts[1:])}
        assert all(0 < step <= TILE_SIZE for step in steps) and max(steps, default=0) - min(steps, default=0) <= 1


@pytest.mark.parametrize("name", ["near-square", "wide 3:2", "very wide 6:1", "tall 5:2"])
def test_tiles_are_the_crops_of_the_resized_picture(name):
    (height, width), (crop, size, _, _) = LAYOUTS[name]
    pictures = picture(height, width)
    top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
    whole = resized(pictures[:, top : top + crop[0], left : left + crop[1]], size, "LANCZOS")  # [1, h, w, 3]
    tiles, masks = tiles_and_masks(pictures, sharpening=0.0)
    layout = tile_layout(height, width)
    assert tiles.shape == (len(layout.offsets), TILE_SIZE, TILE_SIZE, 3) and masks.shape == (len(layout.offsets), *size)
    for tile, (top, left) in zip(tiles, layout.offsets):
        assert torch.equal(tile, whole[0, top : top + TILE_SIZE, left : left + TILE_SIZE])


def test_without_a_mask_each_tile_masks_its_square_and_the_tiles_cover_the_picture():
    _, masks = tiles_and_masks(picture(300, 450), sharpening=0.0)  # tiles at 0 and 128 across 384
    assert masks.shape == (2, 256, 384)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    for mask, left in zip(masks, (0, 128)):
        assert (mask[:, left : left + TILE_SIZE] == 1).all() and mask.sum() == TILE_SIZE * TILE_SIZE
    assert (masks.amax(0) == 1).all()


def test_a_user_mask_is_stretched_to_the_picture_and_cut_by_each_tile():
    pictures = picture(200, 400)  # 2:1: two tiles side by side, no overlap
    user = torch.zeros(1, 50, 100)
    user[:, :, :25] = 1.0  # the left quarter, at a quarter of the picture's resolution
    _, masks = tiles_and_masks(pictures, sharpening=0.0, attn_mask=user)
    assert masks.shape == (2, 256, 512)
    assert (masks[0, :, :120] == 1).all() and (masks[0, :, 136:] == 0).all()  # bilinear edge around column 128
    assert (masks[1] == 0).all()  # the right tile lies outside the user's mask
    soft = torch.linspace(0, 1, 400).expand(1, 200, 400)
    _, soft_masks = tiles_and_masks(pictures, sharpening=0.0, attn_mask=soft)
    expected = F.interpolate(soft.unsqueeze(0), size=(256, 512), mode="bilinear", antialias=True)[0, 0]  # [256, 512]
    torch.testing.assert_close(soft_masks.sum(0), expected.clamp(0, 1))
    assert (soft_masks[0, :, 256:] == 0).all() and (soft_masks[1, :, :256] == 0).all()
    assert soft_masks[0, 0, 10] < soft_masks[0, 0, 200] < soft_masks[1, 0, 300] < soft_masks[1, 0, 500]


def test_sharpening_changes_pixels_only_above_zero():
    pictures = picture(300, 450, seed=3)
    plain, _ = tiles_and_masks(pictures, sharpening=0.0)
    sharp, _ = tiles_and_masks(pictures, sharpening=0.8)
    assert (plain - sharp).abs().max() > 1e-2
    whole = sharpened(resized(pictures, (256, 384), "LANCZOS"), 0.8)  # sharpened before the cut: no seams at the edges
    assert torch.equal(sharp[1], whole[0, :, 128:384])


def test_batches_are_tile_major_and_masks_follow():
    pictures = picture(200, 600, seed=1, batch=2)  # 3:1: three tiles
    tiles, masks = tiles_and_masks(pictures, sharpening=0.0)
    assert tiles.shape[0] == 6 and masks.shape[0] == 3
    for index in range(2):
        alone, alone_masks = tiles_and_masks(pictures[index : index + 1], sharpening=0.0)
        assert torch.equal(tiles[index::2], alone)
        assert torch.equal(masks, alone_masks)
    per_picture = torch.stack([torch.ones(200, 600), torch.zeros(200, 600)])
    _, masks = tiles_and_masks(pictures, sharpening=0.0, attn_mask=per_picture)
    assert masks.shape == (6, 256, 768)  # one per tile image, in the tiles' order
    assert all(masks[index].sum() == TILE_SIZE**2 for index in (0, 2, 4)) and (masks[1::2] == 0).all()


@pytest.mark.parametrize(("pictures", "mask", "message"), [
    (torch.rand(2, 10, 20, 3), torch.ones(3, 10, 20), "attn_mask holds 3 masks but image holds 2 pictures"),
    (torch.zeros(1, 0, 20, 3), None, "the image must be a batch of pictures"),
    (torch.zeros(0, 10, 20, 3), None, "the image must be a batch of pictures"),
    (torch.rand(1, 10, 20, 3), torch.ones(1, 0, 20), "attn_mask has shape"),
])  # fmt: skip
def test_bad_inputs_are_refused_with_a_message(pictures, mask, message):
    with pytest.raises(IPAdapterError, match=message):
        tiles_and_masks(pictures, sharpening=0.0, attn_mask=mask)


@pytest.mark.host
def test_the_node_gives_tiles_and_masks_and_names_itself(comfy_host):
    from decoupled_ipadapter.nodes.tiles import Tiles

    with torch.inference_mode():
        tiles, masks = Tiles.execute(image=picture(300, 300), sharpening=0.0).result
        assert tiles.shape == (4, TILE_SIZE, TILE_SIZE, 3) and masks.shape == (4, 512, 512)
        with pytest.raises(IPAdapterError, match=r"^IPAdapter Tiles: attn_mask holds 2 masks but image holds 1 pictures"):
            Tiles.execute(image=picture(300, 300), sharpening=0.0, attn_mask=torch.ones(2, 8, 8))


@pytest.fixture(scope="module")
def tiny(comfy_host):
    model = tiny_comfy_model("SD1.5", seed=61)
    return model, linear_adapter(model, seed=62)


def layer_output(model, patched, inputs):
    layer = unet_transformer_modules(model.model.diffusion_model)[0].layers[0]
    q, k, v, options = inputs
    return call_patch(replace_patch(patched, layer.key), q, k, v, options)


def test_grouped_masks_act_as_one_apply_per_group(tiny):
    """2 pictures × 2 tiles, tile-major, with 2 masks: each mask's pair of images acts as a separate Apply with that
    pair and mask (its own softmax), not as masks that each cover all four images in one softmax."""
    model, managed = tiny
    generator = torch.Generator().manual_seed(63)
    positive = torch.randn(4, 1024, generator=generator)  # [tile 0 of both pictures, tile 1 of both]

    def embeds(rows):
        return make_embeds(rows, torch.zeros(1, 1024), clip_output="image_embeds")

    def applied(base, rows, mask):
        return apply_image_prompt(base, managed.adapter, managed.weights_patcher, embeds(rows), weight=0.8,
                                  start_at=0.0, end_at=1.0, attn_mask=mask)  # fmt: skip

    masks = torch.zeros(2, 64, 64)
    masks[0, :, :40] = 1.0  # the tiles overlap: columns 24..39 are in both
    masks[1, :, 24:] = 1.0
    grouped = applied(model, positive, masks)
    separate = applied(applied(model, positive[:2], masks[:1]), positive[2:], masks[1:])
    one_softmax = applied(applied(model, positive, masks[:1]), positive, masks[1:])
    q, k, v, options = layer_inputs(model, unet_transformer_modules(model.model.diffusion_model)[0].layers[0].key, seed=6)
    inputs = (q, k, v, {**options, "original_shape": [2, 4, 8, 8]})  # 64 queries: the 8x8 grid
    out = layer_output(model, grouped, inputs)
    torch.testing.assert_close(out, layer_output(model, separate, inputs), rtol=1e-5, atol=1e-6)
    assert (out - layer_output(model, one_softmax, inputs)).abs().max() > 1e-3
    with pytest.raises(IPAdapterError, match="attn_mask holds 3 masks but the embeds hold 4 reference images"):
        applied(model, positive, torch.ones(3, 64, 64))


def test_tiles_of_two_pictures_through_encode_and_apply_act_tile_by_tile(tiny, tmp_path):
    """The wiring the node is made for: Tiles -> Encode Image -> Apply IPAdapter (advanced) with the tiles' masks is,
    at a layer, one Apply per tile with that tile's two pictures and mask."""
    from tiny_clip_vision import tiny_clip_vision

    from decoupled_ipadapter.nodes.apply import ApplyIPAdapterAdvanced
    from decoupled_ipadapter.nodes.encode import EncodeImage
    from decoupled_ipadapter.nodes.tiles import Tiles

    model, managed = tiny
    clip_vision = tiny_clip_vision("ViT-H", tmp_path, seed=64)
    options = {"weight": 0.8, "start_at": 0.0, "end_at": 1.0, "weight_type": "linear", "embeds_scaling": "V only",
               "block_weights": ""}  # fmt: skip
    with torch.inference_mode():
        tiles, masks = Tiles.execute(image=picture(200, 600, seed=2, batch=2), sharpening=0.3).result
        (embeds,) = EncodeImage.execute(ipadapter=managed, clip_vision=clip_vision, image=tiles).result
        applied = ApplyIPAdapterAdvanced.execute(model=model, ipadapter=managed, embeds=embeds, attn_mask=masks, **options)
        (patched,) = applied.result
    assert embeds.image_count == 6 and masks.shape == (3, 256, 768)
    by_tile = model
    for tile in range(3):
        pair = make_embeds(embeds.positive[2 * tile : 2 * tile + 2], embeds.negative[:1], clip_output=embeds.clip_output)
        by_tile = apply_image_prompt(by_tile, managed.adapter, managed.weights_patcher, pair, attn_mask=masks[tile : tile + 1],
                                     **options)  # fmt: skip
    q, k, v, layer_options = layer_inputs(model, unet_transformer_modules(model.model.diffusion_model)[0].layers[0].key, seed=7)
    inputs = (q, k, v, {**layer_options, "original_shape": [2, 4, 4, 16]})  # 64 queries: a wide 4x16 latent
    out = layer_output(model, patched, inputs)
    torch.testing.assert_close(out, layer_output(model, by_tile, inputs), rtol=1e-5, atol=1e-6)
    assert (out - layer_output(model, model, inputs)).abs().max() > 1e-3
