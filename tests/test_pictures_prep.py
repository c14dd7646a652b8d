"""IPAdapter Prep Image (ipadapter_core/pictures/prep.py): the square each crop position takes, the black bars of
pad, the resize filters, and contrast-adaptive sharpening written out here from its formula."""

import math

import pytest
import torch

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.pictures.prep import (
    INTERPOLATIONS,
    prepared_pictures,
    sharpened,
    squared,
)


def numbered(height: int, width: int) -> torch.Tensor:
    """[1, H, W, 3]: channel 0 the row, channel 1 the column (over 1000), channel 2 constant: where a pixel came
    from can be read off it."""
    rows = torch.arange(height, dtype=torch.float32).view(1, height, 1, 1).expand(1, height, width, 1)
    columns = torch.arange(width, dtype=torch.float32).view(1, 1, width, 1).expand(1, height, width, 1)
    return torch.cat([rows, columns, torch.full((1, height, width, 1), 500.0)], dim=-1) / 1000


@pytest.mark.parametrize(("position", "top", "left"), [("top", 0, 20), ("bottom", 40, 20), ("center", 20, 20)])
def test_tall_picture_crops_where_asked(position, top, left):
    square = squared(numbered(100, 60)[:, :, :, :], position)  # side 60
    assert square.shape == (1, 60, 60, 3)
    assert round(square[0, 0, 0, 0].item() * 1000) == top and square[0, 0, 0, 1].item() == 0


@pytest.mark.parametrize(("position", "left"), [("left", 0), ("right", 40), ("center", 20), ("top", 20)])
def test_wide_picture_crops_where_asked(position, left):
    square = squared(numbered(60, 100), position)
    assert square.shape == (1, 60, 60, 3)
    assert round(square[0, 0, 0, 1].item() * 1000) == left and square[0, 0, 0, 0].item() == 0


def test_pad_centres_the_picture_between_black_bars():
    padded = squared(numbered(60, 100) + 0.1, "pad")  # +0.1: no picture pixel is black
    assert padded.shape == (1, 100, 100, 3)
    assert (padded[0, :20] == 0).all() and (padded[0, 80:] == 0).all()
    assert (padded[0, 20:80] > 0).all()
    assert torch.equal(padded[0, 20:80], numbered(60, 100)[0] + 0.1)


def test_nearest_at_half_size_keeps_every_other_pixel_and_box_averages():
    picture = torch.rand((1, 64, 64, 3))
    nearest = prepared_pictures(picture, crop_position="center", interpolation="NEAREST", sharpening=0.0, size=32)
    assert torch.equal(nearest, picture[:, 1::2, 1::2, :])  # PIL's nearest takes the centre of each 2x2 block's far corner
    box = prepared_pictures(picture, crop_position="center", interpolation="BOX", sharpening=0.0, size=32)
    blocks = picture.view(1, 32, 2, 32, 2, 3).mean(dim=(2, 4))
    torch.testing.assert_close(box, blocks, atol=1e-6, rtol=0)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_every_filter_gives_the_size_and_keeps_a_flat_picture(interpolation):
    flat = torch.full((2, 90, 120, 3), 0.3)
    out = prepared_pictures(flat, crop_position="center", interpolation=interpolation, sharpening=0.0, size=224)
    assert out.shape == (2, 224, 224, 3)
    torch.testing.assert_close(out, torch.full_like(out, 0.3), atol=1e-5, rtol=0)


def cas_pixel(window: torch.Tensor, amount: float) -> float:
    """CAS of the centre of a 3x3 window, written out: soft min and max of the cross plus the diagonal, headroom,
    weight, and the weighted sum of the four neighbours."""
    a, b, c, d, e, f, g, h, i = window.flatten().tolist()
    low = min(b, d, e, f, h) + min(a, c, g, i)
    high = max(b, d, e, f, h) + max(a, c, g, i)
    headroom = min(max(min(low, 2 - high) / high, 0.0), 1.0)
    weight = -math.sqrt(headroom) * (1 / 8 + amount * (1 / 5 - 1 / 8))
    return min(max(((b + d + f + h) * weight + e) / (1 + 4 * weight), 0.0), 1.0)


@pytest.mark.parametrize("amount", [0.2, 1.0])
def test_sharpening_is_the_cas_formula_inside_the_picture(amount):
    torch.manual_seed(0)
    picture = 0.2 + 0.6 * torch.rand((1, 6, 6, 1))
    out = sharpened(picture, amount)
    for y in range(1, 5):
        for x in range(1, 5):
            assert out[0, y, x, 0].item() == pytest.approx(cas_pixel(picture[0, y - 1 : y + 2, x - 1 : x + 2, 0], amount), abs=1e-6)


def test_sharpening_raises_contrast_at_an_edge_and_leaves_flat_areas():
    step = torch.zeros((1, 8, 8, 3))
    step[:, :, 4:] = 0.6
    step[:, :, :4] = 0.3
    out = prepared_pictures(step, crop_position="center", interpolation="NEAREST", sharpening=1.0, size=8)
    assert out[0, 4, 4, 0] > 0.6 and out[0, 4, 3, 0] < 0.3  # the edge overshoots on both sides
    assert out[0, 4, 0, 0].item() == pytest.approx(0.3) and out[0, 4, 7, 0].item() == pytest.approx(0.6)
    off = prepared_pictures(step, crop_position="center", interpolation="NEAREST", sharpening=0.0, size=8)
    assert torch.equal(off, step)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"crop_position": "middle"}, "'middle' is not a crop position"),
    ({"interpolation": "CUBIC"}, "'CUBIC' is not an interpolation"),
    ({"sharpening": -0.1}, "sharpening must be between 0 and 1"),
    ({"pictures": torch.zeros((1, 0, 5, 3))}, "must be a batch of pictures"),
])  # fmt: skip
def test_bad_values_are_refused_with_a_message(arguments, message):
    values = {"pictures": torch.rand((1, 10, 10, 3)), "crop_position": "center", "interpolation": "LANCZOS",
              "sharpening": 0.0, **arguments}  # fmt: skip
    with pytest.raises(IPAdapterError, match=message):
        prepared_pictures(values.pop("pictures"), **values)


@pytest.mark.host
def test_the_node_validates_its_combos_and_names_itself(comfy_host):
    from decoupled_ipadapter.nodes.prep_image import PrepImage

    assert PrepImage.validate_inputs(interpolation="BOX", crop_position="pad") is True
    assert "'diagonal' is not an option of crop_position" in PrepImage.validate_inputs(interpolation="BOX", crop_position="diagonal")
    with torch.inference_mode():
        (out,) = PrepImage.execute(image=numbered(60, 100), interpolation="NEAREST", crop_position="right",
                                   sharpening=0.0, size=60).result  # fmt: skip
    assert torch.equal(out, numbered(60, 100)[:, :, 40:, :])
