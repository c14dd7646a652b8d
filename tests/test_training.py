"""Training an IP-Adapter (ipadapter_core/training/, nodes/train.py) on the tiny SD1.5-layout UNet, CPU, fp32.

The frozen encoders of a real run are stood in for by tiny ones with the real widths: the tiny CLIP vision (ViT-H's
1024-wide image embeds), a text encoder giving each caption fixed random 768-wide tokens, and the pictures
average-pooled into 4-channel 8x8 latents (what a VAE is for the tests: a fixed function of the picture). The saved
files are read back by the pack's loader and by diffusers (the oracle).
"""

import os
import time
import zlib

import numpy
import pytest
import torch
import torch.utils.checkpoint
from PIL import Image, ImageDraw
from tiny_clip_vision import tiny_clip_vision
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_parity_diffusers import RELATIVE_TOLERANCE, clip_like, comfy_forward, diffusers_forward
from tiny_flux import tiny_flux_config, tiny_flux_model
from tiny_models import (
    SD15_HIDDEN_SIZES,
    TINY_SDXL_COMFY,
    adapter_state_dict,
    diffusers_twin,
    fill_random_,
    layer_hidden_sizes,
    tiny_comfy_model,
)

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.memory import manage
from decoupled_ipadapter.ipadapter_core.training.dataset import Caption, encode_training_data
from decoupled_ipadapter.ipadapter_core.training import loop
from decoupled_ipadapter.ipadapter_core.training.files import state_path
from decoupled_ipadapter.ipadapter_core.training.loop import TrainingSettings, step_loss
from decoupled_ipadapter.ipadapter_core.training.method import denoising_loss, drop_choices, new_adapter
from decoupled_ipadapter.ipadapter_core.training.patch import TrainingBatch, training_model
from decoupled_ipadapter.ipadapter_core.training.run import output_file_path, train_adapter_file

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
    """Coloured shapes (a disc or a square, random colour, size and place) on a ground of a random colour: `[count, 32, 32, 3]`."""
    generator = torch.Generator().manual_seed(seed)
    pictures = []
    for _ in range(count):
        colour, (size, x, y, kind) = torch.rand(3, generator=generator), torch.rand(4, generator=generator).tolist()
        ground = tuple(int(255 * c) for c in torch.rand(3, generator=generator).tolist())
        image = Image.new("RGB", (PICTURE_SIZE, PICTURE_SIZE), ground)
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


def file_bytes(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class UNetOnly:
    """The part of a diffusers pipeline that `IPAdapterMixin.load_ip_adapter` reads: the UNet (no image encoder)."""

    def __init__(self, unet):
        self.unet = unet


def diffusers_load_ip_adapter(unet, path):
    """diffusers' own reader of an adapter file (`load_ip_adapter`, the public entry), into `unet`."""
    from diffusers.loaders import IPAdapterMixin

    IPAdapterMixin.load_ip_adapter(
        UNetOnly(unet), str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None,
        low_cpu_mem_usage=False,
    )  # fmt: skip


@pytest.mark.parametrize("kind, projection", [("ip-adapter", "linear"), ("ip-adapter-plus", "resampler")])
def test_saved_file_reloads_with_the_same_numbers_in_the_loader_and_in_diffusers(model, clip_vision, tmp_path, kind, projection):
    path = tmp_path / f"trained-{kind}_sd15.safetensors"
    trained, losses = train_file(model, clip_vision, path, kind=kind, steps=1, learning_rate=1e-3)
    assert len(losses) == 1
    saved = load_file(str(path))
    official = adapter_state_dict(projection, hidden_sizes=layer_hidden_sizes(model), text_width=768, seed=0, embedding_dim=1024 if projection == "linear" else 1280)
    assert {key: value.shape for key, value in saved.items()} == {key: value.shape for key, value in official.items()}
    assert {value.dtype for value in saved.values()} == {torch.float16}, "a new adapter is saved in fp16, as official files"

    loaded = load_adapter(str(path))
    assert loaded.spec.variant == f"{kind}_sd15" and trained.adapter.spec == loaded.spec
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, trained.adapter.model.state_dict()[key]), key

    generator = torch.Generator().manual_seed(5)
    positive, negative = clip_like(projection, 1, generator), clip_like(projection, 1, generator)
    embeds = make_embeds(positive, negative, clip_output="image_embeds" if projection == "linear" else "penultimate_hidden_states")
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([400.0, 400.0])
    text = torch.randn(2, 77, 768, generator=generator)
    ours = {}
    for name, adapter in (("node output", trained), ("Load IPAdapter", manage(loaded))):
        patched = apply_image_prompt(model, adapter.adapter, adapter.weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
        ours[name] = comfy_forward(patched, x, t, text, [1, 0])
    assert torch.equal(ours["node output"], ours["Load IPAdapter"])

    reference = diffusers_twin(model, "SD1.5")
    diffusers_load_ip_adapter(reference, path)
    theirs = diffusers_forward(reference, x, t, text, torch.stack([embeds.negative, embeds.positive]), 1.0)
    error = (ours["Load IPAdapter"] - theirs).abs().max().item()
    assert error <= RELATIVE_TOLERANCE * theirs.abs().max().item(), f"|Δ| = {error}"


def test_a_fine_tune_of_0_steps_writes_back_the_file_it_started_from_bit_for_bit(model, clip_vision, tmp_path):
    start_path = tmp_path / "ip-adapter_sd15.safetensors"
    save_file(adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(model), text_width=768, seed=4, dtype=torch.float16), str(start_path))
    start = manage(load_adapter(str(start_path)))
    output = tmp_path / "fine-tuned.safetensors"
    _, losses = train_file(model, clip_vision, output, start=start, start_path=str(start_path), steps=0)
    assert losses == []
    assert file_bytes(output) == file_bytes(start_path)
    train_file(model, clip_vision, output, start=start, steps=1, learning_rate=1e-3)
    assert file_bytes(output) != file_bytes(start_path), "one step must change the file (the check above can fail)"


def test_a_new_adapter_starts_its_keys_and_values_from_the_text_keys_and_values(model, clip_vision, tmp_path):
    from decoupled_ipadapter.ipadapter_core.unet.layer_map import cross_attention_modules

    path = tmp_path / "new.safetensors"
    train_file(model, clip_vision, path, steps=0)
    saved = load_file(str(path))
    layers = cross_attention_modules(model.model.diffusion_model)
    assert len(layers) == 16
    for layer, attn2 in layers:
        assert torch.equal(saved[f"ip_adapter.{layer.number}.to_k_ip.weight"], attn2.to_k.weight.half())
        assert torch.equal(saved[f"ip_adapter.{layer.number}.to_v_ip.weight"], attn2.to_v.weight.half())


def test_frozen_stays_frozen_and_both_the_projection_and_every_layer_learn(model, clip_vision, tmp_path):
    unet_before = {key: value.clone() for key, value in model.model.diffusion_model.state_dict().items()}
    vision_before = {key: value.clone() for key, value in clip_vision.model.state_dict().items()}
    train_file(model, clip_vision, tmp_path / "start.safetensors", steps=0)
    # no weight decay: a weight that changes got a gradient (AdamW moves nothing on a zero gradient)
    train_file(model, clip_vision, tmp_path / "trained.safetensors", steps=3, learning_rate=1e-3, weight_decay=0.0)
    for key, value in model.model.diffusion_model.state_dict().items():
        assert torch.equal(value, unet_before[key]), f"the diffusion model's {key} changed"
    for key, value in clip_vision.model.state_dict().items():
        assert torch.equal(value, vision_before[key]), f"the image encoder's {key} changed"
    start, trained = load_file(str(tmp_path / "start.safetensors")), load_file(str(tmp_path / "trained.safetensors"))
    unchanged = [key for key in start if torch.equal(start[key], trained[key])]
    assert unchanged == [], f"these weights did not learn: {unchanged}"
    assert all(not parameter.requires_grad for parameter in model.model.diffusion_model.parameters())


def test_the_training_patch_computes_what_apply_runs_with_each_rows_own_reference(model, tmp_path):
    generator = torch.Generator().manual_seed(9)
    flat = adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(model), text_width=768, seed=6)
    save_file(flat, str(tmp_path / "ip-adapter_sd15.safetensors"))
    managed = manage(load_adapter(str(tmp_path / "ip-adapter_sd15.safetensors")))
    references = torch.randn(2, 1024, generator=generator)  # two rows, each its own reference
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([300.0, 700.0])
    text = torch.randn(2, 77, 768, generator=generator)
    batch = TrainingBatch()
    trained_model = training_model(model, managed.adapter.model, batch)
    batch.tokens = managed.adapter.model.image_proj(references)  # [2, 4, 768]
    training = comfy_forward(trained_model, x, t, text, [0])
    for row in range(2):
        embeds = make_embeds(references[row : row + 1], torch.zeros(1, 1024), clip_output="image_embeds")
        patched = apply_image_prompt(model, managed.adapter, managed.weights_patcher, embeds, weight=1.0, start_at=0.0, end_at=1.0)
        applied = comfy_forward(patched, x[row : row + 1], t[row : row + 1], text[row : row + 1], [0])
        error = (training[row] - applied[0]).abs().max().item()
        assert error <= 1e-5 * applied.abs().max().item(), f"row {row}: |Δ| = {error}"
    assert (training[0] - comfy_forward(model, x, t, text, [0])[0]).abs().max() > 1e-3, "the image prompt must act"


DROP_RATES = dict(image_drop=0.05, text_drop=0.1, both_drop=0.15)
BOUND_SIGMAS = 5  # each observed rate within 5 binomial standard deviations of the asked rate


def within_bound(observed: float, rate: float, count: int) -> bool:
    return abs(observed - rate) <= BOUND_SIGMAS * (rate * (1 - rate) / count) ** 0.5


def test_drop_rates_are_what_was_asked(model, clip_vision, monkeypatch):
    """The pure rule on 200 000 draws, then the rows the training steps really feed the model over 3 000 steps."""
    draws = 200_000
    drops = drop_choices(torch.rand(draws, generator=torch.Generator().manual_seed(0)), **DROP_RATES)
    image, text = drops.image.float(), drops.text.float()
    both = (image * text).mean().item()
    assert within_bound(both, DROP_RATES["both_drop"], draws)
    assert within_bound(image.mean().item() - both, DROP_RATES["image_drop"], draws)
    assert within_bound(text.mean().item() - both, DROP_RATES["text_drop"], draws)

    data = encode_training_data(
        shape_pictures(4, seed=1), ["a red shape", "a shape", "two shapes", "shapes"], encode_latents=pooled_latents,
        clip_vision=clip_vision, clip_output="image_embeds", encode_text=text_tokens,
    )  # fmt: skip
    seen = []

    def record(patched, batch, adapter, *, latents, image_inputs, captions, **rest):
        for inputs, caption in zip(image_inputs, captions):
            seen.append((torch.equal(inputs, data.unconditional_image[0]), caption is data.empty_caption))
        return latents.clone().requires_grad_(True)

    monkeypatch.setattr(loop, "denoise", record)
    steps, batch_size = 3000, 4
    options = settings(batch_size=batch_size, **DROP_RATES)
    for step in range(steps):
        step_loss(model, None, None, data, options, step, kind="eps", dtype=torch.float32)
    count = steps * batch_size
    assert len(seen) == count
    rates = {
        "image_drop": sum(image and not text for image, text in seen) / count,
        "text_drop": sum(text and not image for image, text in seen) / count,
        "both_drop": sum(image and text for image, text in seen) / count,
    }
    for name, rate in rates.items():
        assert within_bound(rate, DROP_RATES[name], count), (name, rate)


def held_out_losses(model, adapter, data, *, repeats: int, highest_percent: float, seed: int) -> dict[str, float]:
    """The denoising loss on held-out pictures with each picture's own reference and with another picture's
    (a derangement), at the same timesteps and noise: `repeats` draws per picture, timesteps in the noisiest
    `highest_percent` of the schedule."""
    batch = TrainingBatch()
    patched = training_model(model, adapter, batch)
    model_sampling = model.get_model_object("model_sampling")
    generator = torch.Generator().manual_seed(seed)
    rows = list(range(data.size)) * repeats
    others = [(row + 1 + index % (data.size - 1)) % data.size for index, row in enumerate(rows)]  # never the row itself
    percents = (highest_percent * torch.rand(len(rows), generator=generator)).clamp_min(1e-6).tolist()
    sigmas = torch.tensor([model_sampling.percent_to_sigma(percent) for percent in percents])
    noise = torch.randn(len(rows), *data.latents.shape[1:], generator=generator)
    latents = data.latents[rows]
    losses = {}
    with torch.no_grad():
        for name, references in (("own", rows), ("shuffled", others)):
            denoised = loop.denoise(
                patched, batch, adapter, latents=latents, noise=noise, sigmas=sigmas,
                image_inputs=data.image_inputs[references], captions=[data.captions[row] for row in rows], dtype=torch.float32,
            )  # fmt: skip
            losses[name] = denoising_loss(denoised, latents, sigmas, kind="v").item()
    return losses


START_TOLERANCE = 0.002  # |own - shuffled| / shuffled at the start: the reference is not yet used
LEARNED_MARGIN = 0.005  # after training, own must be below shuffled by at least this fraction


def test_the_adapter_learns_from_the_image_not_only_the_captions(comfy_host, clip_vision):
    """Coloured shapes on coloured grounds, all captioned "a shape": only the reference tells the pictures apart.

    The tiny UNet has random weights, so it does not denoise; at high noise a v-prediction model's target is close to
    the clean picture, which only the reference can tell it. So the model here predicts v (as SD2's 768-v models),
    and the held-out loss is taken at the noisiest 40 % of the timesteps, where the reference is informative."""
    model = tiny_comfy_model("SD1.5", seed=1, prediction="v")
    encode = dict(encode_latents=pooled_latents, clip_vision=clip_vision, clip_output="image_embeds", encode_text=text_tokens)
    training = encode_training_data(shape_pictures(16, seed=10), ["a shape"] * 16, **encode)
    held_out = encode_training_data(shape_pictures(8, seed=11), ["a shape"] * 8, **encode)
    layers = [layer for layer, _ in loop.trainable_layers(model)]
    adapter = new_adapter("ip-adapter", layers, loop.text_keys_values(model), embedding_dim=1024, seed=0)
    evaluation = dict(repeats=8, highest_percent=0.4, seed=123)
    start = held_out_losses(model, adapter, held_out, **evaluation)
    began = time.perf_counter()
    run = loop.train(model, adapter, training, settings(steps=120, batch_size=8, learning_rate=1e-3))
    step_seconds = (time.perf_counter() - began) / 120
    end = held_out_losses(model, run.adapter, held_out, **evaluation)
    print(f"held-out v loss, own / shuffled reference: start {start}, after 120 steps {end}; {step_seconds:.3f} s/step")
    assert abs(start["own"] - start["shuffled"]) <= START_TOLERANCE * start["shuffled"], start
    assert end["own"] <= (1 - LEARNED_MARGIN) * end["shuffled"], end


def test_training_again_from_the_saved_file_continues_it(model, clip_vision, tmp_path):
    """2 steps, then 2 more from the saved file, give the file 4 steps give, bit for bit (batches, drops, noise and
    AdamW's moments continue); without the training state beside the file, the continuation differs."""
    first, resumed, straight = (tmp_path / f"{name}.safetensors" for name in ("first", "resumed", "straight"))
    options = dict(learning_rate=1e-3, seed=5)
    train_file(model, clip_vision, first, steps=2, **options)
    start = manage(load_adapter(str(first)))
    train_file(model, clip_vision, resumed, start=start, start_path=str(first), steps=2, **options)
    train_file(model, clip_vision, straight, steps=4, **options)
    assert file_bytes(resumed) == file_bytes(straight)
    with safe_open(state_path(str(resumed)), framework="pt") as state:
        assert state.metadata()["steps"] == "4"
    os.remove(state_path(str(first)))
    train_file(model, clip_vision, resumed, start=start, start_path=str(first), steps=2, **options)
    assert file_bytes(resumed) != file_bytes(straight)


def no_file_written(path) -> bool:
    return not os.path.exists(path) and not os.path.exists(state_path(str(path)))


@pytest.mark.parametrize(
    "images, captions, message",
    [
        ([], [], "the dataset is empty"),
        ([shape_pictures(3, seed=2)], ["a shape", " ", "a shape"], "picture 2 of 3 has no caption"),
        ([shape_pictures(3, seed=2)], ["a shape"] * 2, "3 pictures but 2 captions"),
        ([shape_pictures(1, seed=2), shape_pictures(1, seed=3)[:, :16]], ["a", "b"], "2 different sizes"),
    ],
)
def test_a_bad_dataset_is_refused_with_what_to_fix_and_nothing_is_written(model, clip_vision, tmp_path, images, captions, message):
    path = tmp_path / "out.safetensors"
    with pytest.raises(IPAdapterError, match=message):
        train_adapter_file(
            model, encode_latents=pooled_latents, clip_vision=clip_vision, encode_text=text_tokens, images=images,
            captions=captions, start=None, start_path=None, kind="ip-adapter", settings=settings(), output_path=str(path),
        )  # fmt: skip
    assert no_file_written(path)


def test_an_adapter_that_does_not_fit_the_model_is_refused(model, clip_vision, tmp_path):
    """An adapter made for the full-size SD1.5 (its layer widths) on the tiny model's other widths."""
    start_path = tmp_path / "ip-adapter_sd15.safetensors"
    save_file(adapter_state_dict("linear", hidden_sizes=SD15_HIDDEN_SIZES, text_width=768, seed=1, dtype=torch.float16), str(start_path))
    path = tmp_path / "out.safetensors"
    with pytest.raises(IPAdapterError, match="Load an IP-Adapter made for"):
        train_file(model, clip_vision, path, start=manage(load_adapter(str(start_path))), start_path=str(start_path))
    assert no_file_written(path)


def test_a_model_of_a_family_the_pack_cannot_train_is_refused(comfy_host, clip_vision, tmp_path):
    path = tmp_path / "out.safetensors"
    with pytest.raises(IPAdapterError, match="a family this pack cannot train an adapter for"):
        train_file(tiny_flux_model(tiny_flux_config(), seed=0), clip_vision, path)
    assert no_file_written(path)


@pytest.mark.parametrize("name", ["../escape.safetensors", "/tmp/absolute.safetensors", "  "])
def test_an_output_name_outside_the_model_folder_is_refused(tmp_path, name):
    with pytest.raises(IPAdapterError, match="does not name a file inside"):
        output_file_path(str(tmp_path), name)
    assert output_file_path(str(tmp_path), "sub/mine") == str(tmp_path / "sub" / "mine.safetensors")


def test_cancelling_stops_training_and_saves_nothing(model, clip_vision, tmp_path):
    """ComfyUI's cancel raises from the progress callback (nodes/train.py): the run stops there, no file is written."""

    class Cancelled(Exception):
        pass

    def cancel_at_step_2(step, loss):
        if step == 2:
            raise Cancelled

    path = tmp_path / "cancelled.safetensors"
    with pytest.raises(Cancelled):
        train_adapter_file(
            model, encode_latents=pooled_latents, clip_vision=clip_vision, encode_text=text_tokens,
            images=[shape_pictures(4, seed=0)], captions=["a shape"] * 4, start=None, start_path=None,
            kind="ip-adapter", settings=settings(steps=5), output_path=str(path), on_step=cancel_at_step_2,
        )  # fmt: skip
    assert no_file_written(path)


def test_gradient_checkpointing_gives_the_same_training_and_is_undone(model, clip_vision, tmp_path, monkeypatch):
    """The blocks recompute in the backward pass (each block's patches found again), with the same result."""
    plain, checkpointed = tmp_path / "plain.safetensors", tmp_path / "checkpointed.safetensors"
    train_file(model, clip_vision, plain, steps=2, learning_rate=1e-3)
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *args, **kwargs: calls.append(1) or checkpoint(*args, **kwargs))
    train_file(model, clip_vision, checkpointed, steps=2, learning_rate=1e-3, gradient_checkpointing=True)
    assert len(calls) >= 2 * 20, "every block of both steps runs under checkpointing"
    assert file_bytes(plain) == file_bytes(checkpointed)
    assert not any("forward" in vars(module) for module in model.model.diffusion_model.modules())


def tiny_sdxl_with_size_conditioning():
    """ComfyUI's SDXL model class (its `y` vector: the pooled text and the size embeddings, 2816 wide) over the tiny
    SDXL-layout UNet (70 cross-attention layers)."""
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(dict(TINY_SDXL_COMFY, adm_in_channels=2816, num_classes="sequential"))
    config.unet_config.update(num_heads=-1, num_head_channels=16)
    model = config.get_model({}, device=torch.device("cpu"))
    fill_random_(model.diffusion_model, seed=0)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def test_an_sdxl_model_trains_with_its_size_conditioning(comfy_host, clip_vision, tmp_path):
    model = tiny_sdxl_with_size_conditioning()

    def sdxl_text(caption: str) -> Caption:
        generator = torch.Generator().manual_seed(zlib.crc32(caption.encode()))
        tokens, pooled = torch.randn(1, 77, 2048, generator=generator), torch.randn(1, 1280, generator=generator)
        return Caption(cross_attn=tokens, options={"pooled_output": pooled, "width": 1024, "height": 1024})

    inputs = loop.model_conditioning(model.model, [sdxl_text("a"), sdxl_text("b")], noise=torch.zeros(2, 4, 8, 8), device="cpu")
    assert inputs["c_crossattn"].shape == (2, 77, 2048) and inputs["y"].shape == (2, 2816)
    assert not torch.equal(inputs["y"][0], inputs["y"][1]), "each row gets its own caption's pooled output"
    path = tmp_path / "trained_sdxl.safetensors"
    trained, losses = train_adapter_file(
        model, encode_latents=pooled_latents, clip_vision=clip_vision, encode_text=sdxl_text,
        images=[shape_pictures(2, seed=0)], captions=["a", "b"], start=None, start_path=None, kind="ip-adapter",
        settings=settings(steps=1), output_path=str(path),
    )  # fmt: skip
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    assert load_adapter(str(path)).spec.variant == "ip-adapter_sdxl_vit-h" and trained.adapter.spec.layer_count == 70
