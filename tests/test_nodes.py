"""The four nodes, called as ComfyUI calls V3 nodes (`Node.execute(...)` -> `io.NodeOutput`), in-process on CPU.

Random adapter files in the official format (tiny_models), tiny UNets with the real SD1.5 / SDXL cross-attention
layout, and tiny CLIP vision models with the real ViT-H / ViT-bigG widths (tiny_clip_vision). Every node call runs
under `torch.inference_mode()`, as ComfyUI's executor runs nodes.
"""

import copy
import gc
import os
import weakref

import pytest
import torch
from safetensors.torch import save_file
from tiny_clip_vision import TOKENS, tiny_clip_vision
from tiny_models import SD15_TEXT_WIDTH, SDXL_TEXT_WIDTH, adapter_state_dict, layer_hidden_sizes, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.embeds import ImagePromptEmbeds
from decoupled_ipadapter.ipadapter_core.encoding import ENCODE_BATCH_SIZE
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.openclip.preprocessing import comfy_clip_preprocess

pytestmark = pytest.mark.host

SUBFOLDER = "test_nodes"  # inside the registered folder, so no other test module's file can shadow these names
VIT_H_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
VIT_BIGG_FILE = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"

# The attn2 keys ComfyUI's UNet looks up (block name, block id, transformer block index), from the real models.
SD15_KEYS = (
    {("input", i, 0) for i in (1, 2, 4, 5, 7, 8)} | {("middle", 0, 0)} | {("output", i, 0) for i in range(3, 12)}
)
SDXL_KEYS = (
    {("input", i, j) for i in (4, 5) for j in range(2)}
    | {("input", i, j) for i in (7, 8) for j in range(10)}
    | {("middle", 0, j) for j in range(10)}
    | {("output", i, j) for i in (0, 1, 2) for j in range(10)}
    | {("output", i, j) for i in (3, 4, 5) for j in range(2)}
)


def run(node, **inputs):
    """Execute a V3 node the way ComfyUI does (inference mode) and return its result tuple."""
    with torch.inference_mode():
        output = node.execute(**inputs)
    return output.result


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from decoupled_ipadapter.nodes import apply, clip_scores, combine, embeds_files, encode, faceid, frame_weights, loader, noise
    from decoupled_ipadapter.nodes import openclip_loader, prep_image, regions, siglip_loader, tiles, train, unified_loader

    return {
        "load": loader.LoadIPAdapter,
        "encode": encode.EncodeImage,
        "apply": apply.ApplyIPAdapter,
        "apply_advanced": apply.ApplyIPAdapterAdvanced,
        "combine": combine.CombineEmbeds,
        "load_openclip_vision": openclip_loader.LoadOpenCLIPVision,
        "load_openclip": openclip_loader.LoadOpenCLIPModel,
        "clip_scores": clip_scores.CLIPScores,
        "unified_loader": unified_loader.UnifiedLoader,
        "save_embeds": embeds_files.SaveEmbeds,
        "load_embeds": embeds_files.LoadEmbeds,
        "load_siglip": siglip_loader.LoadSigLIPVision,
        "load_insightface": faceid.LoadInsightFace,
        "encode_face": faceid.EncodeFace,
        "unified_loader_faceid": unified_loader.UnifiedLoaderFaceID,
        "noise": noise.NoiseImage,
        "prep_image": prep_image.PrepImage,
        "train": train.TrainIPAdapter,
        "weights": frame_weights.Weights,
        "weights_from_strategy": frame_weights.WeightsFromStrategy,
        "prompt_schedule_from_weights_strategy": frame_weights.PromptScheduleFromWeightsStrategy,
        "combine_weights": frame_weights.CombineWeights,
        "tiles": tiles.Tiles,
        "regional_conditioning": regions.RegionalConditioning,
        "combine_params": regions.CombineParams,
        "apply_from_params": regions.ApplyFromParams,
    }


class LazyModels(dict):
    """Tiny UNets by layout, built on first use (the SDXL one only for the tests that need it)."""

    def __missing__(self, layout):
        self[layout] = tiny_comfy_model(layout, seed={"SD1.5": 3, "SDXL": 4}[layout])
        return self[layout]


@pytest.fixture(scope="module")
def models(comfy_host):
    return LazyModels()


# Random adapters in the official format, stored in fp16 (half the bytes to write): role -> (file name, recipe)
ADAPTER_FILES = {
    "base": ("ip-adapter_sd15.safetensors", dict(projection="linear", layout="SD1.5")),
    "full_face": ("ip-adapter-full-face_sd15.safetensors", dict(projection="mlp", layout="SD1.5")),
    "vit_g": ("ip-adapter_sd15_vit-G.safetensors", dict(projection="linear", layout="SD1.5", embedding_dim=1280)),
    "sdxl": ("ip-adapter_sdxl_vit-h.safetensors", dict(projection="linear", layout="SDXL")),
}
TEXT_WIDTH = {"SD1.5": SD15_TEXT_WIDTH, "SDXL": SDXL_TEXT_WIDTH}


def write_adapter(path, models, *, projection, layout, seed, embedding_dim=None):
    flat = adapter_state_dict(
        projection,
        hidden_sizes=layer_hidden_sizes(models[layout]),
        text_width=TEXT_WIDTH[layout],
        seed=seed,
        embedding_dim=embedding_dim,
        dtype=torch.float16,
    )
    save_file(flat, str(path))
    return flat


@pytest.fixture(scope="module")
def adapter_folder(comfy_host, models, tmp_path_factory):
    """A folder registered as an `ipadapter` model folder, holding the SD1.5 adapters (the SDXL one comes on demand)."""
    import folder_paths

    root = tmp_path_factory.mktemp("ipadapter_models")
    folder = root / SUBFOLDER
    folder.mkdir()
    for seed, (name, recipe) in enumerate(ADAPTER_FILES.values()):
        if recipe["layout"] == "SD1.5":
            write_adapter(folder / name, models, seed=seed, **recipe)
    folder_paths.add_model_folder_path("ipadapter", str(root))
    yield folder
    paths = folder_paths.folder_names_and_paths["ipadapter"][0]
    if str(root) in paths:
        paths.remove(str(root))


class LazyAdapters(dict):
    """Load IPAdapter outputs by role (see ADAPTER_FILES), loaded through the node on first use."""

    def __init__(self, nodes, folder, models):
        super().__init__()
        self.nodes, self.folder, self.models = nodes, folder, models

    def __missing__(self, role):
        name, recipe = ADAPTER_FILES[role]
        if not (self.folder / name).exists():
            write_adapter(self.folder / name, self.models, seed=list(ADAPTER_FILES).index(role), **recipe)
        self[role] = run(self.nodes["load"], ipadapter_name=f"{SUBFOLDER}/{name}")[0]
        return self[role]


@pytest.fixture(scope="module")
def adapters(nodes, adapter_folder, models):
    return LazyAdapters(nodes, adapter_folder, models)


@pytest.fixture(scope="module")
def encoders(comfy_host, tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip_vision")
    return {
        "ViT-H": tiny_clip_vision("ViT-H", directory, seed=5),
        "ViT-bigG": tiny_clip_vision("ViT-bigG", directory, seed=6),
    }


@pytest.fixture(scope="module")
def encode(nodes, adapters, encoders):
    """Run the Encode node: encode(adapter role, images, encoder=..., negative_image=...) -> embeds."""

    def call(role, image, *, encoder="ViT-H", **optional):
        return run(nodes["encode"], ipadapter=adapters[role], clip_vision=encoders[encoder], image=image, **optional)[0]

    return call


@pytest.fixture
def encode_calls(encoders, monkeypatch):
    """The batch sizes the ViT-H encoder is called with."""
    clip_vision, calls = encoders["ViT-H"], []
    original = clip_vision.encode_image

    def spy(image, crop=True):
        calls.append(image.shape[0])
        return original(image, crop=crop)

    monkeypatch.setattr(clip_vision, "encode_image", spy)
    return calls


def images(count: int, *, seed: int, height: int = 40, width: int = 48) -> torch.Tensor:
    """An IMAGE batch [B, H, W, 3] in 0..1, not square (so the centre crop is exercised)."""
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def encoded(clip_vision, pixels: torch.Tensor, output: str) -> torch.Tensor:
    """ComfyUI's own encoding of an IMAGE batch, the oracle for the node."""
    with torch.inference_mode():
        return clip_vision.encode_image(pixels, crop=True)[output]


# --- Load IPAdapter -------------------------------------------------------------------------------------------------


def test_loader_lists_and_loads_the_files_of_the_ipadapter_folder(comfy_host, nodes, adapter_folder):
    import folder_paths

    listed = folder_paths.get_filename_list("ipadapter")
    for name in os.listdir(adapter_folder):
        assert f"{SUBFOLDER}/{name}" in listed
    (managed,) = run(nodes["load"], ipadapter_name=f"{SUBFOLDER}/ip-adapter_sd15.safetensors")
    spec = managed.adapter.spec
    assert (spec.variant, spec.base, spec.projection) == ("ip-adapter_sd15", "SD1.5", "linear")
    assert spec.image_encoder == "ViT-H"
    assert managed.weights_patcher.model is managed.adapter.model


def test_loader_returns_the_cached_adapter_for_the_same_file(nodes, adapter_folder, models):
    path = adapter_folder / "ip-adapter-full-face_sd15_cache.safetensors"
    write_adapter(path, models, projection="mlp", layout="SD1.5", seed=98)
    name = f"{SUBFOLDER}/{path.name}"
    (first,) = run(nodes["load"], ipadapter_name=name)
    (second,) = run(nodes["load"], ipadapter_name=name)
    assert second is first

    # a new version of the file (new content and time) is loaded again, not served from the cache
    stat = path.stat()
    flat = write_adapter(path, models, projection="mlp", layout="SD1.5", seed=99)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    (third,) = run(nodes["load"], ipadapter_name=name)
    assert third is not first
    assert torch.equal(third.adapter.model.state_dict()["image_proj.proj.0.weight"], flat["image_proj.proj.0.weight"])


def test_loader_cache_lets_an_adapter_go_when_nothing_else_holds_it(nodes, adapter_folder, models):
    """ComfyUI releases a node's output (`/free`, cache eviction): the loader's cache must not keep the weights."""
    path = adapter_folder / "ip-adapter_sd15_released.safetensors"
    write_adapter(path, models, projection="linear", layout="SD1.5", seed=97)
    name = f"{SUBFOLDER}/{path.name}"
    (first,) = run(nodes["load"], ipadapter_name=name)
    first_weights = weakref.ref(first.adapter.model)
    del first
    gc.collect()
    assert first_weights() is None, "the adapter's weights are still referenced after its last user let it go"


def test_loader_keeps_an_ipadapter_entry_of_extra_model_paths(comfy_host, nodes, models, tmp_path):
    """extra_model_paths.yaml is read before custom nodes load; its `ipadapter:` folder must survive registration."""
    import folder_paths
    import utils.extra_config

    from decoupled_ipadapter.nodes import register_model_folder

    extra = tmp_path / "shared_models" / "ipadapter"
    extra.mkdir(parents=True)
    write_adapter(extra / "yaml-ip-adapter_sd15.safetensors", models, projection="linear", layout="SD1.5", seed=11)
    (extra / "notes.txt").write_text("not a model")
    yaml_path = tmp_path / "extra_model_paths.yaml"
    yaml_path.write_text("shared:\n  base_path: shared_models\n  ipadapter: ipadapter\n")

    saved = folder_paths.folder_names_and_paths.pop("ipadapter")
    try:
        utils.extra_config.load_extra_path_config(str(yaml_path))  # as main.py does, before the packs load
        register_model_folder()
        paths, extensions = (list(part) for part in folder_paths.folder_names_and_paths["ipadapter"])
        assert str(extra) in paths
        assert os.path.join(folder_paths.models_dir, "ipadapter") in paths
        assert {".safetensors", ".bin"} <= set(extensions)
        listed = folder_paths.get_filename_list("ipadapter")
        assert "yaml-ip-adapter_sd15.safetensors" in listed and "notes.txt" not in listed
        (managed,) = run(nodes["load"], ipadapter_name="yaml-ip-adapter_sd15.safetensors")
        assert managed.adapter.spec.variant == "ip-adapter_sd15"
        register_model_folder()  # a second registration (a reload) adds nothing twice
        assert folder_paths.folder_names_and_paths["ipadapter"][0] == paths
    finally:
        folder_paths.folder_names_and_paths["ipadapter"] = saved
        folder_paths.filename_list_cache.pop("ipadapter", None)


def test_loader_names_a_missing_file(nodes, adapter_folder):
    with pytest.raises(IPAdapterError) as raised:
        run(nodes["load"], ipadapter_name="no-such-adapter.safetensors")
    assert "Load IPAdapter" in str(raised.value) and "no-such-adapter.safetensors" in str(raised.value)
    assert "Put the file there" in str(raised.value) and str(adapter_folder.parent) in str(raised.value)


# --- IPAdapter Encode Image -----------------------------------------------------------------------------------------


def test_encode_base_adapter_reads_image_embeds_with_a_zero_negative(encode, encoders):
    clip_vision, pixels = encoders["ViT-H"], images(3, seed=1)
    embeds = encode("base", pixels)
    assert isinstance(embeds, ImagePromptEmbeds)
    assert embeds.clip_output == "image_embeds"
    assert embeds.positive.shape == (3, 1024) and embeds.negative.shape == (3, 1024)
    torch.testing.assert_close(embeds.positive, encoded(clip_vision, pixels, "image_embeds"), rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(embeds.negative) == 0


def test_encode_plus_adapter_negative_is_the_encoder_on_zero_pixels_not_a_black_image(encode, encoders):
    clip_vision, pixels = encoders["ViT-H"], images(2, seed=2)
    embeds = encode("full_face", pixels)
    assert embeds.clip_output == "penultimate_hidden_states"
    assert embeds.positive.shape == (2, TOKENS, 1280) and embeds.negative.shape == (2, TOKENS, 1280)
    torch.testing.assert_close(
        embeds.positive, encoded(clip_vision, pixels, "penultimate_hidden_states"), rtol=1e-5, atol=1e-6
    )

    size = clip_vision.image_size
    with torch.inference_mode():
        zero_pixels = clip_vision.model(pixel_values=torch.zeros(1, 3, size, size), intermediate_output=-2)[1]
    for row in embeds.negative:
        torch.testing.assert_close(row, zero_pixels[0], rtol=1e-5, atol=1e-6)
    black = encoded(clip_vision, torch.zeros(1, size, size, 3), "penultimate_hidden_states")
    assert (embeds.negative[0] - black[0]).abs().max() > 1e-2, "the negative must not be a black image's encoding"


def test_encode_splits_large_batches_and_matches_one_by_one(encode, encoders, encode_calls):
    clip_vision, pixels = encoders["ViT-H"], images(20, seed=3, height=32, width=32)
    embeds = encode("full_face", pixels)
    assert encode_calls == [ENCODE_BATCH_SIZE, 20 - ENCODE_BATCH_SIZE]
    one_by_one = torch.cat([encoded(clip_vision, pixels[i : i + 1], "penultimate_hidden_states") for i in range(20)])
    torch.testing.assert_close(embeds.positive, one_by_one, rtol=1e-5, atol=1e-5)


def test_encode_negative_image_is_broadcast_or_paired(encode, encoders):
    clip_vision, pixels = encoders["ViT-H"], images(3, seed=4)
    one, three = images(1, seed=5), images(3, seed=6)

    embeds = encode("base", pixels, negative_image=one)
    expected = encoded(clip_vision, one, "image_embeds")[0]
    assert embeds.negative.shape == (3, 1024)
    for row in embeds.negative:
        torch.testing.assert_close(row, expected, rtol=1e-5, atol=1e-6)

    embeds = encode("full_face", pixels, negative_image=three)
    torch.testing.assert_close(
        embeds.negative, encoded(clip_vision, three, "penultimate_hidden_states"), rtol=1e-5, atol=1e-6
    )

    with pytest.raises(IPAdapterError, match=r"^IPAdapter Encode Image: .*negative image batch \(2 images\)"):
        encode("base", pixels, negative_image=images(2, seed=7))


def fail_if_called(*args, **kwargs):
    raise AssertionError("the encoder ran although the adapter does not fit it")


@pytest.mark.parametrize("adapter", ["base", "full_face"])
def test_encode_refuses_a_vit_bigg_encoder_for_a_vit_h_adapter_before_encoding(encode, encoders, monkeypatch, adapter):
    clip_vision = encoders["ViT-bigG"]
    monkeypatch.setattr(clip_vision, "encode_image", fail_if_called)
    monkeypatch.setattr(clip_vision.model, "forward", fail_if_called)
    monkeypatch.setattr("comfy.model_management.load_model_gpu", fail_if_called)
    with pytest.raises(IPAdapterError) as raised:
        encode(adapter, images(2, seed=8), encoder="ViT-bigG")
    message = str(raised.value)
    assert message.startswith("IPAdapter Encode Image: ")
    assert VIT_H_FILE in message and "ViT-bigG" in message


def test_encode_vit_g_adapter_needs_the_vit_bigg_encoder(encode):
    with pytest.raises(IPAdapterError, match=VIT_BIGG_FILE):
        encode("vit_g", images(1, seed=9))
    embeds = encode("vit_g", images(2, seed=9), encoder="ViT-bigG")
    assert embeds.positive.shape == (2, 1280) and embeds.clip_output == "image_embeds"


def test_encode_records_the_adapter_and_encoder_the_embeds_are_for(encode):
    embeds = encode("vit_g", images(1, seed=14), encoder="ViT-bigG")
    assert (embeds.adapter_variant, embeds.image_encoder) == ("ip-adapter_sd15_vit-G", "ViT-bigG")


# --- Encode: crop = center | pad -----------------------------------------------------------------------------------


def wide_pair(*, height: int = 64, width: int = 192):
    """Two wide pictures with the same middle and different outer quarters (what a centre crop cuts off)."""
    generator = torch.Generator().manual_seed(21)
    first = torch.rand(1, height, width, 3, generator=generator)
    second = first.clone()
    quarter = width // 4
    second[:, :, :quarter] = 1.0 - second[:, :, :quarter]
    second[:, :, -quarter:] = 0.0
    return first, second


@pytest.mark.parametrize("role", ["base", "full_face"])
def test_encode_crop_center_is_the_reference_preprocessing_as_before(encode, encoders, role):
    clip_vision, pixels = encoders["ViT-H"], images(2, seed=22)
    output = "image_embeds" if role == "base" else "penultimate_hidden_states"
    default, center = encode(role, pixels), encode(role, pixels, crop="center")
    assert torch.equal(center.positive, default.positive) and torch.equal(center.negative, default.negative)
    assert torch.equal(center.positive, encoded(clip_vision, pixels, output)), "ComfyUI's own crop=True encoding"
    first, second = wide_pair()
    assert torch.equal(encode(role, first).positive, encode(role, second).positive), "the edges are cut off"


@pytest.mark.parametrize("shape", [(64, 192), (150, 61)], ids=["wide", "tall-odd-padding"])
def test_encode_crop_pad_keeps_the_whole_picture_on_the_encoders_mean_colour(encode, encoders, shape):
    clip_vision = encoders["ViT-H"]
    first, second = wide_pair() if shape == (64, 192) else (images(1, seed=23, height=150, width=61),) * 2
    embeds = encode("base", first, crop="pad")
    height, width = shape
    size = max(shape)
    square = torch.tensor(clip_vision.image_mean).expand(1, size, size, 3).clone()  # the mean colour everywhere
    top, left = (size - height) // 2, (size - width) // 2
    square[:, top : top + height, left : left + width] = first  # the picture centred, all of it
    assert torch.equal(embeds.positive, encoded(clip_vision, square, "image_embeds"))
    if shape == (64, 192):
        assert not torch.equal(encode("base", second, crop="pad").positive, embeds.positive), "the edges count"
    negative = encode("base", first, negative_image=second, crop="pad").negative
    assert torch.equal(negative, encode("base", second, crop="pad").positive), "the negative image is padded alike"


def test_encode_pad_colour_normalises_to_zero_and_square_pictures_are_not_changed(encode, encoders):

    clip_vision = encoders["ViT-H"]
    mean_colour = torch.tensor(clip_vision.image_mean).expand(1, 8, 8, 3)
    normalised = comfy_clip_preprocess()(mean_colour, size=8)
    assert normalised.abs().max() < 0.01, "ComfyUI's 8-bit rounding aside, the padding is the zero pixel"
    square = images(2, seed=24, height=40, width=40)
    assert torch.equal(encode("base", square, crop="pad").positive, encode("base", square).positive)


def test_encode_refuses_an_unknown_crop(encode):
    with pytest.raises(IPAdapterError, match=r"^IPAdapter Encode Image: Unknown crop 'stretch'; use one of center, pad"):
        encode("base", images(1, seed=25), crop="stretch")


# --- Progress and interrupt (Encode) --------------------------------------------------------------------------------


@pytest.fixture
def progress_hook():
    import comfy.utils

    updates = []
    saved = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    yield updates
    comfy.utils.set_progress_bar_global_hook(saved)


def test_encode_reports_progress_per_batch(encode, progress_hook, monkeypatch):
    """The node reports after every batch; ComfyUI passes on the first and the last update always and may throttle
    the ones between (newer hosts do), so what the hook sees is checked only for those."""
    import comfy.utils

    reported = []
    update_absolute = comfy.utils.ProgressBar.update_absolute

    def recording(self, value, total=None, preview=None):
        reported.append((value, self.total if total is None else total))
        return update_absolute(self, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", recording)
    encode("base", images(20, seed=10), negative_image=images(1, seed=11))
    assert reported == [(ENCODE_BATCH_SIZE, 21), (20, 21), (21, 21)]
    assert progress_hook[0] == (ENCODE_BATCH_SIZE, 21) and progress_hook[-1] == (21, 21)
    assert set(progress_hook) <= set(reported)


def test_encode_stops_between_batches_when_comfyui_is_interrupted(encode, encode_calls):
    """The interrupt arrives while the first batch is encoded (here: from the progress hook, after that batch)."""
    import comfy.model_management
    import comfy.utils

    updates = []

    def hook(value, total, preview, node_id=None):
        updates.append((value, total))
        comfy.model_management.interrupt_current_processing(True)  # the user presses Cancel

    saved = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            encode("base", images(40, seed=12, height=32, width=32))
    finally:
        comfy.model_management.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(saved)
    assert encode_calls == [ENCODE_BATCH_SIZE], "encoding must stop after the batch during which the interrupt came"
    assert updates == [(ENCODE_BATCH_SIZE, 40)]


def test_encode_does_not_start_when_comfyui_was_interrupted(encode, encode_calls):
    import comfy.model_management

    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            encode("full_face", images(40, seed=13, height=32, width=32))
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert encode_calls == [], "no batch may start after an interrupt"
    assert not comfy.model_management.processing_interrupted()


# --- Apply IPAdapter ------------------------------------------------------------------------------------------------


def transformer_block(diffusion_model, key):
    """The BasicTransformerBlock that ComfyUI's attn2 key (block name, block id, index) designates."""
    block_name, block_id, index = key
    block = {
        "input": lambda: diffusion_model.input_blocks[block_id],
        "output": lambda: diffusion_model.output_blocks[block_id],
        "middle": lambda: diffusion_model.middle_block,
    }[block_name]()
    assert block_name != "middle" or block_id == 0, key
    (spatial,) = [module for module in block if hasattr(module, "transformer_blocks")]
    return spatial.transformer_blocks[index]


APPLY_CASES = {"SD1.5": ("base", SD15_KEYS), "SDXL": ("sdxl", SDXL_KEYS)}


@pytest.mark.parametrize("layout", list(APPLY_CASES))
def test_apply_patches_every_cross_attention_layer_of_a_clone(nodes, adapters, encode, models, layout):
    role, expected_keys = APPLY_CASES[layout]
    model = models[layout]
    options_before = copy.deepcopy(model.model_options)
    embeds = encode(role, images(2, seed=13))
    (patched,) = run(
        nodes["apply"], model=model, ipadapter=adapters[role], embeds=embeds, weight=0.7, start_at=0.0, end_at=1.0
    )

    assert patched is not model and patched.model is model.model, "a clone sharing the weights"
    assert model.model_options == options_before, "the input model must not be changed"
    assert "patches_replace" not in model.model_options.get("transformer_options", {})

    all_patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    patches = {key: patch for key, patch in all_patches.items() if len(key) == 3}
    assert len(patches) == len(expected_keys) == {"SD1.5": 16, "SDXL": 70}[layout]
    assert set(patches) == expected_keys
    # SD1.5's blocks hold one layer each: its (block, id) key, which other packs use there, holds the same patch
    block_keys = {key: patch for key, patch in all_patches.items() if len(key) == 2}
    assert set(block_keys) == ({key[:2] for key in expected_keys} if layout == "SD1.5" else set())
    assert all(patch is patches[(*key, 0)] for key, patch in block_keys.items())
    assert {key[1] for key in patches if key[0] == "middle"} == {0}, "the middle block is ('middle', 0, i) in ComfyUI"
    diffusion_model = patched.get_model_object("diffusion_model")
    for key, patch in patches.items():
        to_k = transformer_block(diffusion_model, key).attn2.to_k
        assert patch.layer.key == key
        assert patch.layer.hidden_size == to_k.weight.shape[0], key
        assert patch.terms[0].weight == pytest.approx(0.7) and patch.terms[0].embeds is embeds

    # checkpoint numbering (diffusers order): ip_adapter.1, .3, ... over input blocks, output blocks, middle block last
    in_order = sorted(patches.values(), key=lambda patch: patch.layer.number)
    assert [patch.layer.number for patch in in_order] == list(range(1, 2 * len(patches), 2))
    block_names = [patch.layer.key[0] for patch in in_order]
    assert block_names == sorted(block_names, key=["input", "output", "middle"].index)


def tiny_dit(kind: str):
    """A ModelPatcher over a tiny Flux or SD3 model, built by ComfyUI's own model configs (random weights)."""
    import dataclasses

    import comfy.ldm.flux.model
    import comfy.model_patcher
    import comfy.supported_models

    if kind == "Flux":
        config = dict(
            image_model="flux", in_channels=16, patch_size=2, out_channels=16, vec_in_dim=32, context_in_dim=32,
            hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[4, 6, 6],
            theta=10000, qkv_bias=True, guidance_embed=False,
        )  # fmt: skip
        if "txt_ids_dims" in {field.name for field in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
            config["txt_ids_dims"] = []  # a field of later ComfyUI versions
        model_config = comfy.supported_models.Flux(config)
    else:
        model_config = comfy.supported_models.SD3(dict(
            in_channels=16, patch_size=2, out_channels=16, depth=2, num_patches=None, pos_embed_max_size=16,
            adm_in_channels=32, context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
        ))  # fmt: skip
    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model_config.get_model({}, device=cpu), load_device=cpu, offload_device=cpu)


@pytest.mark.parametrize("kind", ["Flux", "SD3"])
def test_apply_on_a_dit_model_names_the_adapters_base_and_the_models_kind(nodes, adapters, encode, kind):
    embeds = encode("base", images(1, seed=14))
    with pytest.raises(IPAdapterError) as raised:
        run(nodes["apply"], model=tiny_dit(kind), ipadapter=adapters["base"], embeds=embeds, weight=1.0, start_at=0.0, end_at=1.0)
    message = str(raised.value)
    assert message.startswith("Apply IPAdapter: 'ip-adapter_sd15.safetensors' is an SD1.5 IP-Adapter")
    assert "SD1.5 checkpoint" in message
    if kind == "Flux":  # supported: the message names the Flux adapter to load instead
        assert "applied to a Flux model" in message and "Load a Flux IP-Adapter" in message, message
    else:  # supported: the message names the SD3.5 adapter to load instead
        assert "applied to an SD3 model" in message and "Load an SD3.5 IP-Adapter" in message, message


# --- IPAdapter Combine Embeds ---------------------------------------------------------------------------------------


def make(count: int, *, seed: int, clip_output: str = "image_embeds", width: int = 1024) -> ImagePromptEmbeds:
    """Random embeds of `count` images (positive rows of a random overall scale, so lengths differ between inputs)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (count, width) if clip_output == "image_embeds" else (count, TOKENS, width)
    return ImagePromptEmbeds(
        positive=torch.randn(shape, generator=generator) * (1 + torch.rand(1, generator=generator) * 3),
        negative=torch.randn(shape, generator=generator),
        clip_output=clip_output,
    )


def by_definition(method: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The combine methods as ipadapter_core/combine.py's docstring defines them, one vector at a time."""
    if method == "add":
        return sum(tensors[1:], tensors[0])
    if method == "subtract":
        result = tensors[0].clone()
        for tensor in tensors[1:]:
            result = result - tensor
        return result
    if method == "average":
        return sum(tensors[1:], tensors[0]) / len(tensors)
    assert method == "norm average"
    flat = [tensor.reshape(-1, tensor.shape[-1]) for tensor in tensors]  # rows = images (and tokens)
    rows = []
    for vectors in zip(*flat):
        lengths = [torch.linalg.vector_norm(vector) for vector in vectors]
        direction = sum(vector / length for vector, length in zip(vectors, lengths)) / len(vectors)
        rows.append(direction / torch.linalg.vector_norm(direction) * (sum(lengths) / len(lengths)))
    return torch.stack(rows).reshape(tensors[0].shape)


@pytest.mark.parametrize("clip_output", ["image_embeds", "penultimate_hidden_states"])
@pytest.mark.parametrize("method", ["add", "subtract", "average", "norm average"])
def test_combine_arithmetic_methods_follow_their_definitions(nodes, method, clip_output):
    width = 1024 if clip_output == "image_embeds" else 1280
    inputs = [make(2, seed=seed, clip_output=clip_output, width=width) for seed in (1, 2, 3)]
    (combined,) = run(nodes["combine"], embeds_1=inputs[0], embeds_2=inputs[1], embeds_3=inputs[2], method=method)
    assert combined.clip_output == clip_output
    expected = by_definition(method, [item.positive for item in inputs])
    torch.testing.assert_close(combined.positive, expected, rtol=1e-5, atol=1e-5)
    expected_negative = (inputs[0].negative + inputs[1].negative + inputs[2].negative) / 3
    torch.testing.assert_close(combined.negative, expected_negative, rtol=1e-5, atol=1e-6)


def test_combine_concat_joins_all_images_in_order(nodes):
    first, second, third = make(2, seed=4), make(3, seed=5), make(1, seed=6)
    (combined,) = run(nodes["combine"], embeds_1=first, embeds_2=second, embeds_5=third, method="concat")
    assert combined.image_count == 2 + 3 + 1
    torch.testing.assert_close(combined.positive, torch.cat([first.positive, second.positive, third.positive]))
    torch.testing.assert_close(combined.negative, torch.cat([first.negative, second.negative, third.negative]))


@pytest.mark.parametrize("method", ["add", "subtract", "average", "norm average"])
def test_combine_broadcasts_a_single_image(nodes, method):
    many = make(3, seed=7, clip_output="penultimate_hidden_states", width=1280)
    single = make(1, seed=8, clip_output="penultimate_hidden_states", width=1280)
    (combined,) = run(nodes["combine"], embeds_1=single, embeds_2=many, method=method)
    assert combined.positive.shape == many.positive.shape
    for index in range(3):
        expected = by_definition(method, [single.positive[0], many.positive[index]])
        torch.testing.assert_close(combined.positive[index], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(combined.negative[index], (single.negative[0] + many.negative[index]) / 2)


def test_combine_refuses_embeds_that_do_not_mix(nodes):
    combine = nodes["combine"]
    with pytest.raises(IPAdapterError, match=r"^IPAdapter Combine Embeds: embeds_2 .*\[1280\].*\[1024\]"):
        run(combine, embeds_1=make(1, seed=1), embeds_2=make(1, seed=2, width=1280), method="add")
    with pytest.raises(IPAdapterError, match=r"embeds_3 \(penultimate_hidden_states"):
        run(
            combine,
            embeds_1=make(1, seed=1),
            embeds_2=make(1, seed=2),
            embeds_3=make(1, seed=3, clip_output="penultimate_hidden_states", width=1024),
            method="concat",
        )
    with pytest.raises(IPAdapterError, match=r"different numbers of images \(\[2, 3\]\).*concat"):
        run(combine, embeds_1=make(2, seed=1), embeds_2=make(3, seed=2), method="average")
    with pytest.raises(IPAdapterError, match="Unknown combine method"):
        run(combine, embeds_1=make(1, seed=1), embeds_2=make(1, seed=2), method="multiply")


def test_combine_keeps_the_common_provenance_and_joins_different_ones(nodes):
    from dataclasses import replace

    sd15 = replace(make(1, seed=1), adapter_variant="ip-adapter_sd15", image_encoder="ViT-H")
    sdxl = replace(make(1, seed=2), adapter_variant="ip-adapter_sdxl_vit-h", image_encoder="ViT-H")
    (same,) = run(nodes["combine"], embeds_1=sd15, embeds_2=sd15, method="average")
    assert (same.adapter_variant, same.image_encoder) == ("ip-adapter_sd15", "ViT-H")
    (mixed,) = run(nodes["combine"], embeds_1=sd15, embeds_2=sdxl, embeds_3=make(1, seed=3), method="concat")
    assert mixed.adapter_variant == "ip-adapter_sd15 + ip-adapter_sdxl_vit-h + unknown"
    assert mixed.image_encoder == "ViT-H + unknown"


def test_node_modules_are_the_ones_the_extension_lists(nodes):
    import asyncio

    from decoupled_ipadapter.nodes import DecoupledIPAdapterExtension

    listed = asyncio.run(DecoupledIPAdapterExtension().get_node_list())
    assert set(listed) == set(nodes.values())
