"""Training an IP-Adapter (ipadapter_core/training/, nodes/train.py) on the tiny SD1.5-layout UNet, CPU, fp32.

The frozen encoders of a real run are stood in for by tiny ones with the real widths: the tiny CLIP vision (ViT-H's
1024-wide image embeds), a text encoder giving each caption fixed random 768-wide tokens, and the pictures
average-pooled into 4-channel 8x8 latents (what a VAE is for the tests: a fixed function of the picture). The saved
files are read back by the pack's loader and by diffusers (the oracle).
"""

import zlib

import numpy
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_clip_vision import tiny_clip_vision
from tiny_models import adapter_state_dict, layer_hidden_sizes, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.memory import manage
from decoupled_ipadapter.ipadapter_core.training.dataset import Caption
from decoupled_ipadapter.ipadapter_core.training.loop import TrainingSettings
from decoupled_ipadapter.ipadapter_core.training.run import train_adapter_file

LATENT_SIZE = 8
PICTURE_SIZE = 32


def pooled_latents(pixels: torch.Tensor) -> torch.Tensor:
    """`[N, H, W, 3]` -> `[N, 4, 8, 8]`: the RGB channels and their mean, pooled, centred (a fixed 'VAE')."""
    channels = pixels.permute(0, 3, 1, 2)  # [N, 3, H, W]
    latents = torch.cat([channels, channels.mean(dim=1, keepdim=True)], dim=1)  # [N, 4, H, W]
    return 2.0 * torch.nn.functional.adaptive_avg_pool2d(latents, LATENT_SIZE) - 1.0


def text_tokens(caption: str) -> Caption:
    """Fixed random tokens `[1, 77, 768]` per caption (the same caption, the same tokens)."""
    generator = torch.Generator().manual_seed(zlib.crc32(caption.encode()))
    return Caption(cross_attn=torch.randn(1, 77, 768, generator=generator), options={})


def shape_pictures(count: int, *, seed: int) -> torch.Tensor:
    """Coloured shapes (a disc or a square, random colour, size and place) on grey: `[count, 32, 32, 3]`."""
    generator = torch.Generator().manual_seed(seed)
    pictures = []
    for _ in range(count):
        colour, (size, x, y, kind) = torch.rand(3, generator=generator), torch.rand(4, generator=generator).tolist()
        image = Image.new("RGB", (PICTURE_SIZE, PICTURE_SIZE), (128, 128, 128))
        radius = 6 + 8 * size
        box = [x * (PICTURE_SIZE - 2 * radius), y * (PICTURE_SIZE - 2 * radius)]
        box += [box[0] + 2 * radius, box[1] + 2 * radius]
        fill = tuple(int(255 * c) for c in colour.tolist())
        (ImageDraw.Draw(image).ellipse if kind < 0.5 else ImageDraw.Draw(image).rectangle)(box, fill=fill)
        pictures.append(torch.from_numpy(numpy.asarray(image, dtype=numpy.float32) / 255))  # [32, 32, 3]
    return torch.stack(pictures)


@pytest.fixture(scope="module")
def model(comfy_host):
    return tiny_comfy_model("SD1.5", seed=1)


@pytest.fixture(scope="module")
def clip_vision(comfy_host, tmp_path_factory):
    return tiny_clip_vision("ViT-H", tmp_path_factory.mktemp("clip_vision"), seed=3)


def settings(**changes) -> TrainingSettings:
    values = dict(steps=2, batch_size=2, learning_rate=1e-4, weight_decay=0.01, seed=0)
    return TrainingSettings(**{**values, **changes})


def train_file(model, clip_vision, path, *, pictures=None, captions=None, start=None, start_path=None, kind="ip-adapter", **changes):
    pictures = shape_pictures(4, seed=0) if pictures is None else pictures
    return train_adapter_file(
        model, encode_latents=pooled_latents, clip_vision=clip_vision, encode_text=text_tokens,
        images=[pictures], captions=captions or ["a shape"] * pictures.shape[0], start=start, start_path=start_path,
        kind=kind, settings=settings(**changes), output_path=str(path),
    )  # fmt: skip


def test_smoke(model, clip_vision, tmp_path):
    import time

    begin = time.perf_counter()
    trained, losses = train_file(model, clip_vision, tmp_path / "a.safetensors", steps=4)
    print(time.perf_counter() - begin, losses)
    assert len(losses) == 4
