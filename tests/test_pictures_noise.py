"""IPAdapter Noise (ipadapter_core/pictures/noise.py): each kind does what its docstring says, the seed decides the
draws, and bad values are refused with a message."""

import pytest
import torch

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.pictures.noise import NOISE_KINDS, NOISE_SIZE, gaussian_blur, noise_pictures


def picture(height=300, width=400, batch=1) -> torch.Tensor:
    """A smooth colour ramp, [B, H, W, 3]: a test can tell it from noise, and see where its pixels went."""
    rows = torch.linspace(0, 1, height).view(1, height, 1, 1)
    columns = torch.linspace(0, 1, width).view(1, 1, width, 1)
    ramp = torch.cat([rows.expand(1, height, width, 1), columns.expand(1, height, width, 1),
                      (rows * columns).expand(1, height, width, 1)], dim=-1)  # fmt: skip
    return ramp.repeat(batch, 1, 1, 1) * torch.linspace(0.5, 1.0, batch).view(batch, 1, 1, 1)


def centre_square(image: torch.Tensor) -> torch.Tensor:
    return noise_pictures("fade", strength=0.0, blur=0, seed=0, image=image)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_one_square_picture_per_reference_and_a_black_square_without_one(kind):
    assert noise_pictures(kind, strength=0.5, blur=0, seed=1, image=picture(batch=3)).shape == (3, NOISE_SIZE, NOISE_SIZE, 3)
    without = noise_pictures(kind, strength=0.5, blur=0, seed=1)
    assert without.shape == (1, NOISE_SIZE, NOISE_SIZE, 3)
    assert 0.0 <= without.min() and without.max() <= 1.0


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_the_seed_decides_the_draws(kind):
    first = noise_pictures(kind, strength=0.7, blur=0, seed=5, image=picture())
    assert torch.equal(first, noise_pictures(kind, strength=0.7, blur=0, seed=5, image=picture()))
    assert not torch.equal(first, noise_pictures(kind, strength=0.7, blur=0, seed=6, image=picture()))


@pytest.mark.parametrize("kind", ("fade", "dissolve", "gaussian"))
def test_strength_zero_keeps_the_centre_square(kind):
    kept = noise_pictures(kind, strength=0.0, blur=0, seed=3, image=picture())
    square = centre_square(picture())
    assert torch.equal(kept, square)
    # the centre square of a 400-wide ramp starts 50 columns in: its first column is not the ramp's first
    assert square[0, 0, 0, 1] > 0.05  # 0.5 * 50/399 there; the uncropped ramp starts at 0


def test_fade_at_full_strength_forgets_the_picture():
    assert torch.equal(noise_pictures("fade", strength=1.0, blur=0, seed=9, image=picture()),
                       noise_pictures("fade", strength=1.0, blur=0, seed=9, image=picture() * 0.2))  # fmt: skip


def test_fade_is_the_mix_of_picture_and_uniform_noise():
    square = centre_square(picture())
    half = noise_pictures("fade", strength=0.5, blur=0, seed=4, image=picture())
    full = noise_pictures("fade", strength=1.0, blur=0, seed=4, image=picture())
    torch.testing.assert_close(half, 0.5 * square + 0.5 * full, atol=1e-6, rtol=0)


def test_dissolve_replaces_about_strength_of_the_pixels_whole():
    square = centre_square(picture())
    dissolved = noise_pictures("dissolve", strength=0.3, blur=0, seed=2, image=picture())
    changed = (dissolved != square).any(dim=-1)  # [B, H, W]: whole pixels are replaced
    assert abs(changed.float().mean().item() - 0.3) < 0.01  # 50176 pixels: 4.5 standard deviations
    untouched = ~changed
    assert torch.equal(dissolved[untouched], square[untouched])


def test_gaussian_adds_noise_of_that_deviation_before_clamping():
    grey = torch.full((1, 64, 64, 3), 0.5)
    noisy = noise_pictures("gaussian", strength=0.1, blur=0, seed=8, image=grey)
    assert abs((noisy - 0.5).std().item() - 0.1) < 0.005
    assert abs((noisy - 0.5).mean().item()) < 0.005


def test_shuffle_moves_the_pixels_and_turns_the_picture():
    square = centre_square(picture())
    shuffled = noise_pictures("shuffle", strength=0.0, blur=0, seed=2, image=picture())
    # strength 0: no noise, the field is smoothest, and the picture is turned: its top-left is the bottom-right's colour
    assert torch.allclose(shuffled[0, :8, :8].mean(dim=(0, 1)), square[0, -8:, -8:].mean(dim=(0, 1)), atol=0.25)
    assert not torch.allclose(shuffled, square.flip(dims=(1, 2)), atol=1e-3)  # and its pixels moved
    scattered = noise_pictures("shuffle", strength=1.0, blur=0, seed=2, image=picture())
    roughness = lambda x: (x[:, 1:] - x[:, :-1]).abs().mean().item()  # noqa: E731
    assert roughness(scattered) > 5 * roughness(shuffled)


def test_blur_smooths_and_an_even_size_is_made_odd():
    noisy = noise_pictures("dissolve", strength=1.0, blur=0, seed=1)
    blurred = noise_pictures("dissolve", strength=1.0, blur=6, seed=1)
    assert blurred.std() < 0.5 * noisy.std()
    seven = gaussian_blur(noisy.permute(0, 3, 1, 2), kernel_size=7, sigma=0.3 * ((7 - 1) * 0.5 - 1) + 0.8)
    torch.testing.assert_close(blurred, seven.permute(0, 2, 3, 1), atol=1e-6, rtol=0)


def test_gaussian_blur_keeps_a_flat_picture_and_its_mean():
    flat = torch.full((1, 3, 20, 20), 0.25)
    torch.testing.assert_close(gaussian_blur(flat, kernel_size=5, sigma=1.1), flat)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"kind": "salt"}, "'salt' is not a noise type"),
    ({"strength": 1.5}, "strength must be between 0 and 1"),
    ({"blur": -1}, "blur must be 0 or more"),
    ({"image": torch.zeros((0, 8, 8, 3))}, "must be a batch of pictures"),
])  # fmt: skip
def test_bad_values_are_refused_with_a_message(arguments, message):
    values = {"kind": "fade", "strength": 0.5, "blur": 0, "seed": 0, "image": None, **arguments}
    with pytest.raises(IPAdapterError, match=message):
        noise_pictures(values.pop("kind"), **values)


@pytest.mark.host
def test_the_node_refuses_an_unknown_type_at_queue_time_and_names_itself(comfy_host):
    from decoupled_ipadapter.nodes.noise import NoiseImage

    assert NoiseImage.validate_inputs(type="dissolve") is True
    assert "'salt' is not an option of type" in NoiseImage.validate_inputs(type="salt")
    with torch.inference_mode():
        (made,) = NoiseImage.execute(type="gaussian", strength=0.2, blur=2, seed=7, image=picture(batch=2)).result
    assert torch.equal(made, noise_pictures("gaussian", strength=0.2, blur=2, seed=7, image=picture(batch=2)))
    with pytest.raises(IPAdapterError, match="^IPAdapter Noise: the noise strength"):
        NoiseImage.execute(type="fade", strength=2.0, blur=0, seed=0)
