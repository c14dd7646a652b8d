"""Image encoders in the OpenCLIP format: recognised from the tensors, rebuilt through open_clip_torch, and equal to
the same weights in ComfyUI's layout, down to the Encode node's embeds.

Random tiny models (tiny_openclip.py), in .bin and .safetensors; the known architectures are checked on meta-device
state dicts built from open_clip's own configs (shapes only: nothing is downloaded or allocated).
"""

import copy
import gc
import json
import logging
import pickle
import weakref
from dataclasses import replace

import pytest
import torch
from tiny_openclip import (
    CUSTOM,
    SMALL,
    VIT_H_WIDTHS,
    comfy_clip_vision,
    openclip_config,
    save_openclip,
    tiny_openclip,
    tiny_openclip_state_dict,
)

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.openclip.preprocessing import comfy_clip_preprocess
from decoupled_ipadapter.openclip.loading import KNOWN_MODELS

pytestmark = pytest.mark.host

OUTPUTS = ("image_embeds", "penultimate_hidden_states", "last_hidden_state")
# fp32, same weights, two implementations (open_clip's nn.MultiheadAttention vs ComfyUI's attention): rounding only.
TOLERANCE = 2e-5
PARITY_ERRORS: list[tuple[str, float]] = []


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def images(count: int, *, seed: int, height: int = 40, width: int = 52) -> torch.Tensor:
    """An IMAGE batch [B, H, W, 3], not square and not 32 px: ComfyUI's resize and centre crop are exercised."""
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small_files(comfy_host, tmp_path_factory):
    """The SMALL model in both containers, in a folder registered as a clip_vision folder, with its config."""
    import folder_paths

    root = tmp_path_factory.mktemp("clip_vision_models")
    state_dict = tiny_openclip_state_dict(SMALL, seed=1)
    (root / "small").mkdir()
    config = openclip_config(SMALL)
    files = {
        "bin": save_openclip(state_dict, root / "small" / "open_clip_pytorch_model.bin", config=config),
        "safetensors": save_openclip(state_dict, root / "small" / "open_clip_model.safetensors", config=config),
        "vision_only": save_openclip(
            tiny_openclip_state_dict(SMALL, seed=1, text=False), root / "vision_only.safetensors", config=config
        ),
    }
    folder_paths.add_model_folder_path("clip_vision", str(root))
    yield {"root": root, "state_dict": state_dict, **files}
    paths = folder_paths.folder_names_and_paths["clip_vision"][0]
    if str(root) in paths:
        paths.remove(str(root))


@pytest.fixture(scope="module")
def loader_nodes(comfy_host):
    from decoupled_ipadapter.nodes.openclip_loader import LoadOpenCLIPModel, LoadOpenCLIPVision

    return {"vision": LoadOpenCLIPVision, "model": LoadOpenCLIPModel}


def run(node, **inputs):
    with torch.inference_mode():
        return node.execute(**inputs).result


# --- recognising the architecture -----------------------------------------------------------------------------------


def heads(transformer) -> set[int]:
    return {block.attn.num_heads for block in transformer.resblocks}


@pytest.mark.parametrize("name", [model.name for model in KNOWN_MODELS])
def test_known_models_are_recognised_and_rebuilt_with_their_own_config(comfy_host, name):
    """From the tensors alone, and with open_clip's own config beside them (which must not be taken for a
    contradiction): the same shapes and heads as open_clip's model."""
    import open_clip

    from decoupled_ipadapter.openclip.config import OpenCLIPConfig
    from decoupled_ipadapter.openclip.loading import architecture_of

    config = open_clip.get_model_config(name)  # open_clip's bundled JSON, no download
    with torch.device("meta"):
        original = open_clip.CLIP(**config)
    state_dict = original.state_dict()
    with_config = OpenCLIPConfig(path="open_clip_config.json", model=config, preprocess={})
    for architecture in (
        architecture_of(state_dict, f"{name}.bin", quick_gelu=False),
        architecture_of(state_dict, f"{name}.bin", quick_gelu=False, config=with_config),
    ):
        assert architecture.name == name
        assert name in architecture.describe()
        assert architecture.embed_dim == config["embed_dim"]
        for key in ("layers", "width", "patch_size", "image_size"):
            assert architecture.vision[key] == config["vision_cfg"][key], key
        with torch.device("meta"):
            rebuilt = open_clip.CLIP(architecture.embed_dim, architecture.vision, architecture.text)
        assert {key: value.shape for key, value in rebuilt.state_dict().items()} == {
            key: value.shape for key, value in state_dict.items()
        }
        assert heads(rebuilt.visual.transformer) == heads(original.visual.transformer)
        assert heads(rebuilt.transformer) == heads(original.transformer)


def test_the_widths_read_without_a_config_have_the_heads_of_every_open_clip_config_of_that_width(comfy_host):
    """The rule the loader reads heads by without a config holds for every ViT config bundled with open_clip."""
    import open_clip

    from decoupled_ipadapter.openclip.loading import TEXT_HEADS, VISION_HEAD_WIDTHS

    checked = 0
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name)
        vision, text = config["vision_cfg"], config["text_cfg"]  # open_clip's defaults where a field is left out
        vision_is_vit = "timm_model_name" not in vision and not isinstance(vision.get("layers"), list)
        if vision_is_vit and vision.get("width", 768) in VISION_HEAD_WIDTHS:
            assert vision.get("head_width", 64) == VISION_HEAD_WIDTHS[vision.get("width", 768)], name
            checked += 1
        if "hf_model_name" not in text and text.get("width", 512) in TEXT_HEADS:
            assert text.get("heads", 8) == TEXT_HEADS[text.get("width", 512)], name
            checked += 1
    assert checked > 50  # open_clip 3.3.0 bundles over a hundred configs


def test_activation_auto_reads_open_clip_config_json_then_the_name(tmp_path):
    from decoupled_ipadapter.openclip.config import read_openclip_config
    from decoupled_ipadapter.openclip.loading import quick_gelu_of

    def quick_gelu(folder: str, activation: str = "auto") -> bool:
        path = str(tmp_path / folder / "open_clip_model.safetensors")
        return quick_gelu_of(path, activation, read_openclip_config(path))

    (tmp_path / "laion").mkdir()
    (tmp_path / "openai-vit-l").mkdir()
    assert not quick_gelu("laion")
    assert quick_gelu("openai-vit-l")
    (tmp_path / "laion" / "open_clip_config.json").write_text('{"model_cfg": {"quick_gelu": true}}')
    assert quick_gelu("laion")
    (tmp_path / "openai-vit-l" / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 768}}')
    assert not quick_gelu("openai-vit-l")  # a config without quick_gelu is GELU, whatever the name says
    assert not quick_gelu("openai-vit-l", "gelu")
    assert quick_gelu("laion", "quick_gelu")


# --- equal to open_clip itself, and to ComfyUI's layout ---------------------------------------------------------------


@pytest.mark.parametrize("container", ["bin", "safetensors"])
def test_openclip_file_matches_comfyui_layout_and_open_clip(comfy_host, small_files, loader_nodes, container, tmp_path):
    """Same weights: the OpenCLIP file through the loader node, ComfyUI's CLIPVisionLoader layout, open_clip's CLIP."""

    clip_vision = run(loader_nodes["vision"], clip_name=f"small/{small_files[container].name}", activation="auto")[0]
    # the file holds both towers; the CLIP_VISION loader builds the image tower alone
    assert "text_projection" in small_files["state_dict"] and not clip_vision.architecture.text_read
    assert all(key.startswith("visual") for key in clip_vision.model.state_dict())
    comfy_model = comfy_clip_vision(small_files["state_dict"], SMALL, tmp_path)
    pixels = images(3, seed=2)
    with torch.inference_mode():
        ours, theirs = clip_vision.encode_image(pixels, crop=True), comfy_model.encode_image(pixels, crop=True)
        oracle = tiny_openclip(SMALL, seed=1).encode_image(comfy_clip_preprocess()(pixels, size=32))
    for output in OUTPUTS:
        assert ours[output].shape == theirs[output].shape, output
        error = relative_error(ours[output], theirs[output])
        PARITY_ERRORS.append((f"{container} {output}", error))
        assert error < TOLERANCE, (output, error)
    assert relative_error(ours["image_embeds"], oracle) < TOLERANCE
    wrong = run(loader_nodes["vision"], clip_name=f"small/{small_files[container].name}", activation="quick_gelu")[0]
    with torch.inference_mode():
        assert relative_error(wrong.encode_image(pixels)["image_embeds"], theirs["image_embeds"]) > 1e-3  # it can fail


def test_loader_caches_per_file_and_activation(small_files, loader_nodes):
    name = f"small/{small_files['safetensors'].name}"
    first = run(loader_nodes["vision"], clip_name=name, activation="auto")[0]
    assert run(loader_nodes["vision"], clip_name=name, activation="auto")[0] is first
    assert run(loader_nodes["vision"], clip_name=name, activation="quick_gelu")[0] is not first
    released = weakref.ref(first)
    del first
    gc.collect()
    assert released() is None, "the cache kept the model after its last user let it go: ComfyUI could not free it"


def test_a_config_added_or_edited_beside_a_file_is_read_again(small_files, loader_nodes):
    folder = small_files["root"] / "edited"
    folder.mkdir()
    save_openclip(small_files["state_dict"], folder / "open_clip_model.safetensors", config=openclip_config(SMALL))
    first = run(loader_nodes["vision"], clip_name="edited/open_clip_model.safetensors", activation="auto")[0]
    assert not first.architecture.quick_gelu
    (folder / "open_clip_config.json").write_text(json.dumps(openclip_config(SMALL, quick_gelu=True), indent=1))
    second = run(loader_nodes["vision"], clip_name="edited/open_clip_model.safetensors", activation="auto")[0]
    assert second is not first and second.architecture.quick_gelu


# --- custom ViTs: the heads their config gives, never a guess ---------------------------------------------------------


@pytest.fixture(scope="module")
def custom_files(comfy_host, tmp_path_factory):
    """CUSTOM (heads 32 wide in the image tower, 16 in the text tower) with its config, and without."""
    root = tmp_path_factory.mktemp("custom_vit")
    state_dict = tiny_openclip_state_dict(CUSTOM, seed=5)
    (root / "with_config").mkdir(), (root / "without_config").mkdir()
    return {
        "state_dict": state_dict,
        "with_config": save_openclip(
            state_dict, root / "with_config" / "open_clip_model.safetensors", config=openclip_config(CUSTOM)
        ),
        "without_config": save_openclip(state_dict, root / "without_config" / "open_clip_model.safetensors"),
    }


def test_a_custom_vit_with_its_config_is_rebuilt_with_its_heads_and_matches_open_clip(custom_files):
    """Image and text embeddings equal open_clip's on the same weights; the old 64-wide guess would be off."""
    import open_clip

    from decoupled_ipadapter.openclip.model import load_openclip_model

    model = load_openclip_model(str(custom_files["with_config"]))
    assert heads(model.vision.model.visual.transformer) == {8}
    assert heads(model.text.tower.transformer) == {6}
    assert "8 heads" in model.architecture.describe() and "6 heads" in model.architecture.describe()
    oracle = tiny_openclip(CUSTOM, seed=5)
    pixels, captions = images(3, seed=6), ["a red bicycle", "two dogs on a beach"]
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)(captions)
    with torch.inference_mode():
        ours_image = model.vision.encode_image(pixels)["image_embeds"]
        ours_text = model.text.encode_text(captions)
        pixel_values = comfy_clip_preprocess()(pixels, size=32)
        oracle_image, oracle_text = oracle.encode_image(pixel_values), oracle.encode_text(tokens)
    for what, ours, reference in (("image", ours_image, oracle_image), ("text", ours_text, oracle_text)):
        error = relative_error(ours, reference)
        PARITY_ERRORS.append((f"custom ViT {what} embeds", error))
        assert error < TOLERANCE, (what, error)
    guess = dict(CUSTOM, vision=dict(CUSTOM["vision"], head_width=64), text=dict(CUSTOM["text"], heads=1))
    guessed = tiny_openclip(guess, seed=5)  # the same weights read with 64-wide heads
    with torch.inference_mode():
        assert relative_error(guessed.encode_image(pixel_values), oracle_image) > 1e-3
        assert relative_error(guessed.encode_text(tokens), oracle_text) > 1e-3


def test_the_configs_pooling_and_activation_are_applied(comfy_host, tmp_path):
    """What the tensors cannot say: average pooling with the norm after it, and QuickGELU, from the config."""

    from decoupled_ipadapter.openclip.model import load_openclip_vision

    pooled = dict(SMALL, vision=dict(SMALL["vision"], pool_type="avg", final_ln_after_pool=True))
    state_dict = tiny_openclip_state_dict(pooled, seed=11, text=False)
    config = openclip_config(pooled, quick_gelu=True)
    path = save_openclip(state_dict, tmp_path / "open_clip_model.safetensors", config=config)
    vision = load_openclip_vision(str(path))
    assert "avg pooling" in vision.architecture.describe() and "QuickGELU" in vision.architecture.describe()
    class_token = tiny_openclip(SMALL, seed=11, quick_gelu=True)  # the same weights, open_clip's default pooling
    class_token.visual.load_state_dict({key[len("visual.") :]: value for key, value in state_dict.items()})
    pixels = images(2, seed=12)
    with torch.inference_mode():
        pixel_values = comfy_clip_preprocess()(pixels, size=32)
        reference = tiny_openclip(pooled, seed=11, quick_gelu=True).encode_image(pixel_values)
        ours = vision.encode_image(pixels)["image_embeds"]
        with_class_token = class_token.encode_image(pixel_values)
    assert relative_error(ours, reference) < TOLERANCE
    assert relative_error(with_class_token, reference) > 1e-3


@pytest.mark.parametrize("loader", ["vision", "model"])
def test_a_custom_vit_without_its_config_is_refused_saying_what_to_put_beside_it(custom_files, loader):
    from decoupled_ipadapter.openclip.model import load_openclip_model, load_openclip_vision

    load = {"vision": load_openclip_vision, "model": load_openclip_model}[loader]
    with pytest.raises(IPAdapterError) as caught:
        load(str(custom_files["without_config"]))
    message = str(caught.value)
    assert message.startswith("'open_clip_model.safetensors' is an OpenCLIP ViT with an image tower 256 wide")
    assert "so they are not guessed" in message and "Put the model's open_clip_config.json" in message
    assert '"vision_cfg": {"width": 256, "layers": 2, "head_width": <width of one attention head>' in message
    assert ("a text tower 96 wide" in message) == (loader == "model")  # the image loader does not read the text tower
    assert ('"heads": <number of attention heads>' in message) == (loader == "model")


def test_a_known_image_tower_beside_a_custom_text_tower_needs_the_config_for_the_text_tower_only(comfy_host, tmp_path):
    from decoupled_ipadapter.openclip.model import load_openclip_model, load_openclip_vision

    config = dict(VIT_H_WIDTHS, text=CUSTOM["text"])
    path = save_openclip(tiny_openclip_state_dict(config, seed=2), tmp_path / "open_clip_model.safetensors")
    assert heads(load_openclip_vision(str(path)).model.visual.transformer) == {16}  # ViT-H's width: 80-wide heads
    with pytest.raises(IPAdapterError, match="an OpenCLIP ViT with a text tower 96 wide: no model this loader knows has that width"):
        load_openclip_model(str(path))
    save_openclip(tiny_openclip_state_dict(config, seed=2), path, config=openclip_config(config))
    assert heads(load_openclip_model(str(path)).text.tower.transformer) == {6}


REMOVED = object()
# The config beside CUSTOM with one field changed: (section of model_cfg, or None for model_cfg itself; field; the new
# value, or REMOVED; the error it must give: both values and the tensor they are read from, or what is not supported).
CONTRADICTIONS = {
    "width": ("vision_cfg", "width", 192, r"vision_cfg\.width is 192 in the config but 256 in the tensors "
              r"\(visual\.conv1\.weight \[256, 3, 8, 8\]\)"),
    "layers": ("vision_cfg", "layers", 3, r"vision_cfg\.layers is 3 in the config but 2 in the tensors "
               r"\(visual\.transformer\.resblocks\.0-1\)"),
    "patch_size": ("vision_cfg", "patch_size", 16, r"vision_cfg\.patch_size is 16 in the config but 8 in the tensors"),
    "image_size": ("vision_cfg", "image_size", [64, 64], r"vision_cfg\.image_size is 64 in the config but 32 in the "
                   r"tensors \(visual\.positional_embedding \[17, 256\]: 4 x 4 patches of 8 px\)"),
    "embed_dim": (None, "embed_dim", 64, r"embed_dim is 64 in the config but 40 in the tensors \(visual\.proj \[256, 40\]\)"),
    "mlp_ratio": ("vision_cfg", "mlp_ratio", 4.0, r"vision_cfg\.mlp_ratio 4\.0 makes the MLP 1024 wide in the config "
                  r"but it is 512 wide in the tensors \(visual\.transformer\.resblocks\.0\.mlp\.c_fc\.weight \[512, 256\]\)"),
    "text_width": ("text_cfg", "width", 128, r"text_cfg\.width is 128 in the config but 96 in the tensors "
                   r"\(token_embedding\.weight \[49408, 96\]\)"),
    "context_default": ("text_cfg", "context_length", REMOVED, r"text_cfg\.context_length is 77 \(open_clip's default: "
                        r"the config does not set it\) in the config but 16 in the tensors"),
    "head_width": ("vision_cfg", "head_width", 48, r"vision_cfg\.head_width 48 does not split the tower's width 256"),
    "text_heads": ("text_cfg", "heads", 5, r"text_cfg\.heads 5 does not split the tower's width 96"),
    "no_vision_cfg": (None, "vision_cfg", REMOVED, r"model_cfg\.vision_cfg must be a JSON object"),
    "unknown_field": ("vision_cfg", "not_a_field", 1, r"vision_cfg has fields this open_clip does not know \(not_a_field\)"),
    "timm": ("vision_cfg", "timm_model_name", "vit_base", r"a timm image tower, which this loader does not support"),
    "hf_tokenizer": ("text_cfg", "hf_tokenizer_name", "bert", r"a Hugging Face tokenizer"),
}


@pytest.mark.parametrize("change", CONTRADICTIONS)
def test_a_config_that_contradicts_the_tensors_is_refused_quoting_both(custom_files, tmp_path, change):
    from decoupled_ipadapter.openclip.model import load_openclip_model

    section, field, value, message = CONTRADICTIONS[change]
    config = copy.deepcopy(openclip_config(CUSTOM))
    changed = config["model_cfg"] if section is None else config["model_cfg"][section]
    if value is REMOVED:
        del changed[field]
    else:
        changed[field] = value
    path = save_openclip(custom_files["state_dict"], tmp_path / "model.safetensors", config=config)
    with pytest.raises(IPAdapterError, match=message) as caught:
        load_openclip_model(str(path))
    assert str(caught.value).startswith(f"'model.safetensors' with its open_clip_config.json ('{tmp_path}")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"cannot be read as OpenCLIP's config"),
        ("[1, 2]", r"is not OpenCLIP's config: it holds a JSON list"),
        ({"resize_mode": "longest"}, r"resize_mode 'longest' is not supported"),
        ({"mean": [0.5, 0.5]}, r"preprocess_cfg\.mean must be one number or three"),
        ({"std": 0}, r"preprocess_cfg\.std must be positive"),
        ({"interpolation": "nearest"}, r"interpolation 'nearest' is not one of"),
    ],
)
def test_a_broken_config_or_unsupported_preprocessing_is_refused(custom_files, tmp_path, content, message):
    """`content`: the config file's text, or the preprocess_cfg beside the model's own model_cfg."""
    from decoupled_ipadapter.openclip.model import load_openclip_vision

    path = save_openclip(custom_files["state_dict"], tmp_path / "model.safetensors")
    text = content if isinstance(content, str) else json.dumps(openclip_config(CUSTOM, preprocess=content))
    (tmp_path / "open_clip_config.json").write_text(text)
    with pytest.raises(IPAdapterError, match=message) as caught:
        load_openclip_vision(str(path))
    assert "open_clip_config.json" in str(caught.value)


# --- the model's own preprocessing --------------------------------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # open_clip.constants, CLIPA's statistics


def smooth_images(count: int, *, seed: int, height: int, width: int) -> torch.Tensor:
    """An IMAGE batch [B, H, W, 3] of soft colour fields in [0.1, 0.9]: bicubic resizing stays within [0, 1], where
    ComfyUI would clamp (as an 8-bit picture is clamped) and open_clip's transform of a tensor would not."""
    coarse = 0.1 + 0.8 * torch.rand(count, 3, 5, 7, generator=torch.Generator().manual_seed(seed))  # [B, 3, 5, 7]
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear").movedim(1, -1)  # [B, H, W, 3]


def open_clip_transform(preprocess_cfg: dict, size: int):
    """open_clip's own inference transform for a model whose config says `preprocess_cfg` (as its factory makes it),
    for pictures given as float tensors `[3, H, W]`: its resize, crop and normalisation steps, without the steps that
    turn a PIL picture into a tensor (the oldest open_clip the pack supports, 2.32, only takes PIL pictures there)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
    from torchvision.transforms import Compose, ToTensor

    config = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(size=size), preprocess_cfg))
    steps = image_transform_v2(config, is_train=False).transforms
    return Compose([step for step in steps if not isinstance(step, ToTensor) and getattr(step, "__name__", "") != "_convert_to_rgb"])


@pytest.fixture(scope="module")
def statistics_files(comfy_host, tmp_path_factory):
    """SMALL trained (say) with ImageNet statistics, for each resize mode; and the same weights with OpenAI's."""
    root = tmp_path_factory.mktemp("statistics")
    state_dict = tiny_openclip_state_dict(SMALL, seed=8, text=False)
    files = {}
    for resize_mode in ("shortest", "squash", None):
        folder = root / str(resize_mode)
        folder.mkdir()
        preprocess = None if resize_mode is None else dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic",
                                                          resize_mode=resize_mode)
        config = openclip_config(SMALL, preprocess=preprocess)
        files[resize_mode] = (save_openclip(state_dict, folder / "open_clip_model.safetensors", config=config), preprocess)
    return files


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_a_model_with_its_own_statistics_matches_open_clips_preprocessing_and_encode_image(
    statistics_files, resize_mode, caplog
):
    """Pixels: ours (ComfyUI's preprocessing with the config's mean, std and resize mode) against open_clip's transform,
    within ComfyUI's rounding to 8-bit levels. Embeds: open_clip's transform and encode_image on 8-bit pictures at the
    model's size, where that rounding changes nothing, against the loaded model's encode_image."""
    from decoupled_ipadapter.openclip.model import load_openclip_vision
    from decoupled_ipadapter.openclip.preprocessing import preprocess

    path, preprocess_cfg = statistics_files[resize_mode]
    with caplog.at_level(logging.INFO):
        vision = load_openclip_vision(str(path))
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "OpenCLIP custom ViT" in logged and "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)" in logged
    assert f"from '{path.parent / 'open_clip_config.json'}'" in logged
    assert vision.image_mean == list(IMAGENET_MEAN) and vision.image_std == list(IMAGENET_STD)
    openai_vision = load_openclip_vision(str(statistics_files[None][0]))  # the same weights, OpenAI's statistics
    other_mode = replace(vision.preprocessing, resize_mode={"shortest": "squash", "squash": "shortest"}[resize_mode])

    transform = open_clip_transform(preprocess_cfg, size=32)
    pictures = smooth_images(2, seed=9, height=40, width=60)  # both resize the short side to 32 px and crop 8 px
    theirs = torch.stack([transform(picture.movedim(-1, 0)) for picture in pictures])  # [B, 3, 32, 32]
    pixels = {  # crop=True, as every caller passes it
        name: preprocess(pictures, preprocessing, size=32, crop=True)
        for name, preprocessing in (("ours", vision.preprocessing), ("openai", openai_vision.preprocessing),
                                    ("other", other_mode))
    }
    rounding = 0.5 / 255 / min(IMAGENET_STD) + 1e-5
    assert (pixels["ours"] - theirs).abs().max().item() <= rounding
    assert (pixels["openai"] - theirs).abs().max().item() > 0.05  # the check can fail: OpenAI's statistics
    assert (pixels["other"] - theirs).abs().max().item() > 0.05  # and the other resize mode

    oracle = tiny_openclip(SMALL, seed=8)
    levels = torch.randint(0, 256, (2, 32, 32, 3), generator=torch.Generator().manual_seed(10), dtype=torch.uint8)
    with torch.inference_mode():
        reference = oracle.encode_image(torch.stack([transform(picture.movedim(-1, 0).float() / 255) for picture in levels]))
        ours = vision.encode_image(levels.float() / 255)["image_embeds"]
        with_openai_statistics = openai_vision.encode_image(levels.float() / 255)["image_embeds"]
    error = relative_error(ours, reference)
    PARITY_ERRORS.append((f"{resize_mode}, ImageNet statistics: image embeds", error))
    assert error < TOLERANCE, error
    assert relative_error(with_openai_statistics, reference) > 1e-3


def test_a_bilinear_model_is_loaded_with_a_warning_that_says_comfyui_resizes_bicubic(custom_files, tmp_path, caplog):
    from decoupled_ipadapter.openclip.model import load_openclip_vision

    config = openclip_config(CUSTOM, preprocess=dict(interpolation="bilinear", resize_mode="squash"))
    path = save_openclip(custom_files["state_dict"], tmp_path / "open_clip_model.safetensors", config=config)
    with caplog.at_level(logging.INFO):
        vision = load_openclip_vision(str(path))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "asks for bilinear, which ComfyUI's CLIP preprocessing does not offer" in warnings[0]
    assert "squashed to a square" in warnings[0] and vision.preprocessing.resize_mode == "squash"


# --- the Encode node ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_h_encoders(comfy_host, tmp_path_factory):
    """A ViT-H-wide tiny model (fp16 file, as released) through our loader and through ComfyUI's layout."""
    from decoupled_ipadapter.openclip.model import load_openclip_vision

    directory = tmp_path_factory.mktemp("vit_h_widths")
    state_dict = tiny_openclip_state_dict(VIT_H_WIDTHS, seed=3, text=False, dtype=torch.float16)
    path = save_openclip(state_dict, directory / "open_clip_model.safetensors")
    return {"openclip": load_openclip_vision(str(path)), "comfy": comfy_clip_vision(state_dict, VIT_H_WIDTHS, directory)}


@pytest.fixture(scope="module")
def adapters(comfy_host, tmp_path_factory):
    """A base (image embeds) and a full-face (penultimate hidden states) SD1.5-shaped adapter, small layers."""
    from safetensors.torch import save_file
    from tiny_models import SD15_TEXT_WIDTH, adapter_state_dict

    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.memory import manage

    directory = tmp_path_factory.mktemp("adapters")
    loaded = {}
    for seed, (role, name, projection) in enumerate(
        [("base", "ip-adapter_sd15.safetensors", "linear"), ("full_face", "ip-adapter-full-face_sd15.safetensors", "mlp")]
    ):
        flat = adapter_state_dict(projection, hidden_sizes=(32,) * 16, text_width=SD15_TEXT_WIDTH, seed=seed)
        save_file(flat, str(directory / name))
        loaded[role] = manage(load_adapter(str(directory / name)))
    return loaded


@pytest.mark.parametrize("role", ["base", "full_face"])
def test_encode_node_accepts_the_openclip_encoder_and_matches_comfyui_layout(vit_h_encoders, adapters, role):
    from decoupled_ipadapter.nodes.encode import EncodeImage

    pixels = images(2, seed=4)
    ours = run(EncodeImage, ipadapter=adapters[role], clip_vision=vit_h_encoders["openclip"], image=pixels)[0]
    theirs = run(EncodeImage, ipadapter=adapters[role], clip_vision=vit_h_encoders["comfy"], image=pixels)[0]
    for part in ("positive", "negative"):
        mine, reference = getattr(ours, part), getattr(theirs, part)
        assert mine.shape == reference.shape
        error = relative_error(mine, reference) if reference.abs().max() > 0 else mine.abs().max().item()
        PARITY_ERRORS.append((f"Encode {role} {part}", error))
        assert error < TOLERANCE, (part, error)


# --- errors -----------------------------------------------------------------------------------------------------------


def test_loader_names_a_missing_file(small_files, loader_nodes):
    with pytest.raises(IPAdapterError, match=r"Load OpenCLIP Vision: 'nope\.bin' is not in the clip_vision model folders"):
        run(loader_nodes["vision"], clip_name="nope.bin", activation="auto")


@pytest.mark.parametrize(
    "content, message",
    [
        ("comfy", "transformers layout: load it with ComfyUI's Load CLIP Vision"),
        ("adapter", "an IP-Adapter file: load it with Load IPAdapter"),
        ("other", r"not an OpenCLIP ViT \(found: weight\)"),
        ("extra", "does not fit the OpenCLIP architecture"),
        ("mismatch", "do not belong to one CLIP model"),
    ],
)
def test_files_that_are_not_a_supported_openclip_model_are_refused(comfy_host, small_files, tmp_path, content, message):
    from tiny_openclip import comfy_layout

    from decoupled_ipadapter.openclip.model import load_openclip_model

    state_dict = dict(small_files["state_dict"])
    if content == "comfy":
        state_dict = comfy_layout(state_dict)
    elif content == "adapter":
        state_dict = {"image_proj.proj.weight": torch.zeros(4, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)}
    elif content == "other":
        state_dict = {"weight": torch.zeros(2)}
    elif content == "extra":
        state_dict["visual.attn_pool.query"] = torch.zeros(2, 2)
    else:
        state_dict["text_projection"] = torch.zeros(64, 40)
    path = save_openclip(state_dict, tmp_path / "model.safetensors", config=openclip_config(SMALL))
    with pytest.raises(IPAdapterError, match=message) as caught:
        load_openclip_model(str(path))
    assert "'model.safetensors'" in str(caught.value)


def test_damaged_and_unsafe_files_are_refused(comfy_host, small_files, tmp_path):
    from decoupled_ipadapter.openclip.model import load_openclip_vision

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(small_files["safetensors"].read_bytes()[:1000])
    with pytest.raises(IPAdapterError, match="'truncated.safetensors' cannot be read as safetensors"):
        load_openclip_vision(str(truncated))
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(IPAdapterError, match="is empty"):
        load_openclip_vision(str(empty))
    unsafe = tmp_path / "unsafe.bin"
    unsafe.write_bytes(pickle.dumps(print))
    with pytest.raises(IPAdapterError, match="pickle that carries code"):
        load_openclip_vision(str(unsafe))
