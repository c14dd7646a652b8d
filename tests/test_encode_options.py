"""IPAdapter Encode Image's weight and encoder enhancer (ipadapter_core/enhancer.py), in-process with the tiny CLIP
vision models (32 px pictures in 16 px patches: a class token and a 2×2 patch grid; ViT-H's real widths).

The enhancer's oracle is written here the port's way, from its description: each picture cut into tiles with
slices, each tile encoded with ComfyUI's own `encode_image`, the patch grids (and the image embeds read as 32×32
grids) laid side by side with `torch.cat` and block-averaged, the class tokens averaged, then mixed with the whole
picture's encoding.
"""

from types import SimpleNamespace

import pytest
import torch
from tiny_clip_vision import TOKENS, tiny_clip_vision, tiny_siglip_vision

from decoupled_ipadapter.ipadapter_core.encoders import IMAGE_EMBEDS, PENULTIMATE
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

pytestmark = pytest.mark.host


def adapter_of(**spec_fields):
    """What Encode reads of a Load IPAdapter output: the adapter's spec and file name."""
    from decoupled_ipadapter.ipadapter_core.unet.format import AdapterSpec

    common = dict(base="SD1.5", cross_attention_dim=768, layer_numbers=(1,), hidden_sizes=(320,))
    spec = AdapterSpec(**common, **spec_fields)
    return SimpleNamespace(adapter=SimpleNamespace(spec=spec, source=f"{spec.variant}.safetensors"))


ADAPTERS = {
    IMAGE_EMBEDS: dict(variant="ip-adapter_sd15", projection="linear", num_tokens=4, image_encoder="ViT-H",
                       clip_output=IMAGE_EMBEDS, embedding_dim=1024),
    PENULTIMATE: dict(variant="ip-adapter-plus_sd15", projection="resampler", num_tokens=16, image_encoder="ViT-H",
                      clip_output=PENULTIMATE, embedding_dim=1280),
    "vit_g": dict(variant="ip-adapter_sd15_vit-G", projection="linear", num_tokens=4, image_encoder="ViT-bigG",
                  clip_output=IMAGE_EMBEDS, embedding_dim=1280),
}  # fmt: skip


@pytest.fixture(scope="module")
def encoders(comfy_host, tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip_vision")
    return {"ViT-H": tiny_clip_vision("ViT-H", directory, seed=5), "ViT-bigG": tiny_clip_vision("ViT-bigG", directory, seed=6)}


@pytest.fixture(scope="module")
def encode(encoders):
    """encode(adapter key of ADAPTERS, images, encoder=..., **optional inputs) -> the Encode node's embeds."""
    from decoupled_ipadapter.nodes.encode import EncodeImage

    def call(adapter, image, *, encoder="ViT-H", **optional):
        with torch.inference_mode():
            output = EncodeImage.execute(
                ipadapter=adapter_of(**ADAPTERS[adapter]), clip_vision=encoders[encoder], image=image, **optional
            )
        return output.result[0]

    return call


def pictures(count: int, *, seed: int, height: int = 41, width: int = 51) -> torch.Tensor:
    """[B, H, W, 3] in 0..1; odd sides, so cutting into 2×2 tiles leaves the last row and column out."""
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def comfy_encoding(clip_vision, images: torch.Tensor, output: str) -> torch.Tensor:
    with torch.inference_mode():
        return clip_vision.encode_image(images, crop=True)[output]


def block_average(grid: torch.Tensor, tiles: int) -> torch.Tensor:
    """[tiles·g, tiles·g, C] -> [g, g, C]: the mean of each tiles×tiles block."""
    size, _, channels = grid.shape
    side = size // tiles
    return grid.reshape(side, tiles, side, tiles, channels).mean(dim=(1, 3))


def enhanced_oracle(clip_vision, images: torch.Tensor, output: str, *, tiles: int, ratio: float) -> torch.Tensor:
    """The port's enhancer, written out: per picture, tiles by slices, encoded one picture's tiles at a time,
    stitched with torch.cat, block-averaged; then [whole·ratio, merged] for one picture, else a per-row blend."""
    whole = comfy_encoding(clip_vision, images, output)
    merged_rows = []
    for picture in images:
        height, width = picture.shape[0] // tiles, picture.shape[1] // tiles
        tile_pictures = torch.stack(
            [picture[i * height : (i + 1) * height, j * width : (j + 1) * width] for i in range(tiles) for j in range(tiles)]
        )
        encoded = comfy_encoding(clip_vision, tile_pictures, output)
        if output == PENULTIMATE:
            side = int((encoded.shape[1] - 1) ** 0.5)
            grids = encoded[:, 1:].reshape(tiles, tiles, side, side, -1)
            class_token = encoded[:, :1].mean(dim=0)  # [1, E]
        else:
            side = int(encoded.shape[1] ** 0.5)
            grids = encoded.reshape(tiles, tiles, side, side, 1)
        stitched = torch.cat([torch.cat([grids[i, j] for j in range(tiles)], dim=1) for i in range(tiles)], dim=0)
        pooled = block_average(stitched, tiles).reshape(side * side, -1)
        merged_rows.append(torch.cat([class_token, pooled]) if output == PENULTIMATE else pooled.reshape(-1))
    merged = torch.stack(merged_rows)
    if images.shape[0] == 1:
        return torch.cat([whole * ratio, merged])
    return whole * ratio + merged * (1 - ratio)


# --- enhance_tiles = 1: the plain encoding ------------------------------------------------------------------------


@pytest.mark.parametrize("output", [IMAGE_EMBEDS, PENULTIMATE])
def test_one_tile_is_the_plain_encoding_bit_for_bit(encode, encoders, output):
    images = pictures(2, seed=1)
    plain = encode(output, images)
    off = encode(output, images, enhance_tiles=1, enhance_ratio=0.3, weight=1.0)
    assert torch.equal(off.positive, plain.positive) and torch.equal(off.negative, plain.negative)
    assert torch.equal(plain.positive, comfy_encoding(encoders["ViT-H"], images, output))


# --- enhance_tiles > 1 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", [IMAGE_EMBEDS, PENULTIMATE])
@pytest.mark.parametrize(("count", "tiles", "ratio"), [(1, 2, 0.5), (3, 2, 0.25), (1, 3, 1.0)])
def test_tiles_are_encoded_stitched_pooled_and_mixed_as_the_port_does(encode, encoders, output, count, tiles, ratio):
    images = pictures(count, seed=2 + count, height=99, width=130)
    embeds = encode(output, images, enhance_tiles=tiles, enhance_ratio=ratio)
    expected = enhanced_oracle(encoders["ViT-H"], images, output, tiles=tiles, ratio=ratio)
    assert embeds.positive.shape == expected.shape and expected.shape[0] == (2 if count == 1 else count)
    torch.testing.assert_close(embeds.positive, expected, rtol=1e-5, atol=1e-6)
    plain = encode(output, images)
    assert (embeds.positive[-1] - plain.positive[-1]).abs().max() > 1e-3, "the tiles change the reading"


def test_one_picture_keeps_both_readings_and_the_ratio_scales_the_whole_one(encode, encoders):
    image = pictures(1, seed=7)
    whole = encode(PENULTIMATE, image).positive[0]
    merged = enhanced_oracle(encoders["ViT-H"], image, PENULTIMATE, tiles=2, ratio=1.0)[1]
    at_one = encode(PENULTIMATE, image, enhance_tiles=2, enhance_ratio=1.0).positive
    at_zero = encode(PENULTIMATE, image, enhance_tiles=2, enhance_ratio=0.0).positive
    assert at_one.shape == at_zero.shape == (2, TOKENS, 1280)
    assert torch.equal(at_one[0], whole) and torch.count_nonzero(at_zero[0]) == 0
    torch.testing.assert_close(at_one[1], merged, rtol=1e-5, atol=1e-6)
    assert torch.equal(at_zero[1], at_one[1])


def test_a_batch_blends_and_the_ratio_edges_give_one_reading(encode, encoders):
    images = pictures(2, seed=8)
    whole = encode(IMAGE_EMBEDS, images).positive
    at_one = encode(IMAGE_EMBEDS, images, enhance_tiles=2, enhance_ratio=1.0).positive
    at_zero = encode(IMAGE_EMBEDS, images, enhance_tiles=2, enhance_ratio=0.0).positive
    assert torch.equal(at_one, whole)
    expected = enhanced_oracle(encoders["ViT-H"], images, IMAGE_EMBEDS, tiles=2, ratio=0.0)
    torch.testing.assert_close(at_zero, expected, rtol=1e-5, atol=1e-6)


def test_pad_cuts_the_padded_square_into_tiles(encode, encoders):
    image = pictures(1, seed=9, height=30, width=64)
    square = torch.tensor(encoders["ViT-H"].image_mean).expand(1, 64, 64, 3).clone()
    square[:, 17:47] = image
    embeds = encode(PENULTIMATE, image, crop="pad", enhance_tiles=2, enhance_ratio=0.5)
    expected = enhanced_oracle(encoders["ViT-H"], square, PENULTIMATE, tiles=2, ratio=0.5)
    torch.testing.assert_close(embeds.positive, expected, rtol=1e-5, atol=1e-6)


def test_the_negative_is_read_whole_and_serves_both_rows(encode, encoders):
    image, negative_image = pictures(1, seed=10), pictures(1, seed=11)
    embeds = encode(PENULTIMATE, image, negative_image=negative_image, enhance_tiles=2)
    negative = comfy_encoding(encoders["ViT-H"], negative_image, PENULTIMATE)[0]
    assert embeds.negative.shape == (2, TOKENS, 1280)
    assert torch.equal(embeds.negative[0], negative) and torch.equal(embeds.negative[1], negative)
    unconditional = encode(PENULTIMATE, image, enhance_tiles=2).negative
    assert torch.equal(unconditional[1], encode(PENULTIMATE, image).negative[0])


def test_the_enhancer_refuses_what_it_cannot_read(encode, encoders, tmp_path):
    from decoupled_ipadapter.ipadapter_core.encoding import encode_image_prompt
    from decoupled_ipadapter.ipadapter_core.mmdit.format import SD3AdapterSpec

    image = pictures(1, seed=12)
    with pytest.raises(IPAdapterError, match=r"^IPAdapter Encode Image: enhance_tiles reads image embeds as a square grid, "
                       r"but 'ip-adapter_sd15_vit-G.safetensors' .* width 1280"):  # fmt: skip
        encode("vit_g", image, encoder="ViT-bigG", enhance_tiles=2)
    assert encode("vit_g", image, encoder="ViT-bigG").positive.shape == (1, 1280), "tiles = 1 still works"
    with pytest.raises(IPAdapterError, match="enhance_tiles is 17; use 1"):
        encode(PENULTIMATE, image, enhance_tiles=17)
    with pytest.raises(IPAdapterError, match="cannot be cut into 16×16 tiles"):
        encode(PENULTIMATE, pictures(1, seed=13, height=12, width=40), enhance_tiles=16)

    sd3 = SD3AdapterSpec(variant="instantx-sd3.5-large-ip-adapter", num_tokens=64, embedding_dim=1152, hidden_size=64,
                         head_dim=64, joint_blocks=1, resampler_dim=64, resampler_depth=1, resampler_heads=1,
                         timestep_dim=32)  # fmt: skip
    siglip = tiny_siglip_vision(tmp_path)
    with pytest.raises(IPAdapterError, match="reads the SigLIP penultimate hidden states. Set enhance_tiles to 1"):
        encode_image_prompt(siglip, sd3, "ip-adapter.bin", image, None, enhance_tiles=2, after_batch=lambda count: None)


def test_the_progress_bar_counts_the_tiles(encode, monkeypatch):
    import comfy.utils

    totals = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: totals.append((value, total)))
    encode(IMAGE_EMBEDS, pictures(2, seed=14), negative_image=pictures(1, seed=15), enhance_tiles=3)
    assert totals[-1] == (2 + 2 * 9 + 1, 2 + 2 * 9 + 1)


# --- weight ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", [IMAGE_EMBEDS, PENULTIMATE])
def test_weight_scales_the_positive_not_the_negative(encode, output):
    images, negative_image = pictures(2, seed=16), pictures(1, seed=17)
    for negative in (None, negative_image):
        plain = encode(output, images, negative_image=negative)
        weighted = encode(output, images, negative_image=negative, weight=-0.75)
        assert torch.equal(weighted.positive, plain.positive * -0.75)
        assert torch.equal(weighted.negative, plain.negative)
    enhanced = encode(output, images, enhance_tiles=2, enhance_ratio=0.5)
    assert torch.equal(encode(output, images, enhance_tiles=2, enhance_ratio=0.5, weight=2.5).positive, enhanced.positive * 2.5)


def test_weight_scales_a_negative_that_is_the_image_itself(tmp_path):
    """InstantX FLUX.1-dev has no unconditional pass: every row reads the image, weighted alike (a stand-in spec with
    that flag, on SigLIP's hidden states, spares the pooling head)."""
    from decoupled_ipadapter.ipadapter_core.encoding import encode_image_prompt

    spec = SimpleNamespace(variant="instantx-flux", image_encoder="SigLIP", clip_output=PENULTIMATE, embedding_dim=1152,
                           black_negative_image=False, zero_negative_embeds=False, negative_is_positive=True)  # fmt: skip
    siglip, images = tiny_siglip_vision(tmp_path), pictures(1, seed=20)
    with torch.inference_mode():
        plain, weighted = (
            encode_image_prompt(siglip, spec, "ip-adapter.bin", images, None, weight=weight, after_batch=lambda count: None)
            for weight in (1.0, 0.5)
        )
    assert torch.equal(weighted.positive, plain.positive * 0.5) and torch.equal(weighted.negative, weighted.positive)


def test_combine_average_of_weighted_references_is_their_weighted_mean(encode):
    from decoupled_ipadapter.nodes.combine import CombineEmbeds

    first, second = pictures(1, seed=18), pictures(1, seed=19)
    with torch.inference_mode():
        (combined,) = CombineEmbeds.execute(
            embeds_1=encode(PENULTIMATE, first, weight=1.5), embeds_2=encode(PENULTIMATE, second, weight=0.5), method="average"
        ).result
    expected = (encode(PENULTIMATE, first).positive * 1.5 + encode(PENULTIMATE, second).positive * 0.5) / 2
    torch.testing.assert_close(combined.positive, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(combined.negative, encode(PENULTIMATE, first).negative)


def test_the_inputs_are_appended_after_crop_with_their_ranges(comfy_host):
    from decoupled_ipadapter.nodes.encode import EncodeImage

    inputs = EncodeImage.define_schema().inputs
    names = [item.id for item in inputs]
    assert names[names.index("crop") + 1 :] == ["weight", "enhance_tiles", "enhance_ratio"]
    ranges = {item.id: (item.default, item.min, item.max, item.step, item.optional) for item in inputs[-3:]}
    assert ranges == {
        "weight": (1.0, -1.0, 3.0, 0.01, True),
        "enhance_tiles": (1, 1, 16, None, True),
        "enhance_ratio": (1.0, 0.0, 1.0, 0.05, True),
    }
