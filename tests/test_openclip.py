"""Image encoders in the OpenCLIP format: recognised from the tensors, rebuilt through open_clip_torch, and equal to
the same weights in ComfyUI's layout, down to the Encode node's embeds.

Random tiny models (tiny_openclip.py), in .bin and .safetensors; the known architectures are checked on meta-device
state dicts built from open_clip's own configs (shapes only: nothing is downloaded or allocated).
"""

import pickle

import pytest
import torch
from tiny_openclip import SMALL, VIT_H_WIDTHS, comfy_clip_vision, save_openclip, tiny_openclip, tiny_openclip_state_dict

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

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
    """The SMALL model in both containers, in a folder registered as a clip_vision folder."""
    import folder_paths

    root = tmp_path_factory.mktemp("clip_vision_models")
    state_dict = tiny_openclip_state_dict(SMALL, seed=1)
    (root / "small").mkdir()
    files = {
        "bin": save_openclip(state_dict, root / "small" / "open_clip_pytorch_model.bin"),
        "safetensors": save_openclip(state_dict, root / "small" / "open_clip_model.safetensors"),
        "vision_only": save_openclip(tiny_openclip_state_dict(SMALL, seed=1, text=False), root / "vision_only.safetensors"),
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


@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-bigG-14", "ViT-L-14"])
def test_known_models_are_recognised_and_rebuilt_with_their_own_config(comfy_host, name):
    import open_clip

    from decoupled_ipadapter.openclip.loading import architecture_of

    config = open_clip.get_model_config(name)  # open_clip's bundled JSON, no download
    with torch.device("meta"):
        original = open_clip.CLIP(**config)
    state_dict = original.state_dict()
    architecture = architecture_of(state_dict, f"{name}.bin", quick_gelu=False)
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
    heads = lambda model: {block.attn.num_heads for block in model.resblocks}  # noqa: E731
    assert heads(rebuilt.visual.transformer) == heads(original.visual.transformer)
    assert heads(rebuilt.transformer) == heads(original.transformer)


def test_activation_auto_reads_open_clip_config_json_then_the_name(tmp_path):
    from decoupled_ipadapter.openclip.loading import quick_gelu_of

    (tmp_path / "laion").mkdir()
    (tmp_path / "openai-vit-l").mkdir()
    assert not quick_gelu_of(str(tmp_path / "laion" / "open_clip_model.safetensors"), "auto")
    assert quick_gelu_of(str(tmp_path / "openai-vit-l" / "open_clip_model.safetensors"), "auto")
    (tmp_path / "laion" / "open_clip_config.json").write_text('{"model_cfg": {"quick_gelu": true}}')
    assert quick_gelu_of(str(tmp_path / "laion" / "open_clip_model.safetensors"), "auto")
    assert not quick_gelu_of(str(tmp_path / "openai-vit-l" / "x.bin"), "gelu")
    assert quick_gelu_of(str(tmp_path / "laion" / "x.bin"), "quick_gelu")


# --- equal to open_clip itself, and to ComfyUI's layout ---------------------------------------------------------------


@pytest.mark.parametrize("container", ["bin", "safetensors"])
def test_openclip_file_matches_comfyui_layout_and_open_clip(comfy_host, small_files, loader_nodes, container, tmp_path):
    """Same weights: the OpenCLIP file through the loader node, ComfyUI's CLIPVisionLoader layout, open_clip's CLIP."""
    import comfy.clip_vision

    clip_vision = run(loader_nodes["vision"], clip_name=f"small/{small_files[container].name}", activation="auto")[0]
    # the file holds both towers; the CLIP_VISION loader builds the image tower alone
    assert clip_vision.architecture.text is not None
    assert all(key.startswith("visual") for key in clip_vision.model.state_dict())
    comfy_model = comfy_clip_vision(small_files["state_dict"], SMALL, tmp_path)
    pixels = images(3, seed=2)
    with torch.inference_mode():
        ours, theirs = clip_vision.encode_image(pixels, crop=True), comfy_model.encode_image(pixels, crop=True)
        oracle = tiny_openclip(SMALL, seed=1).encode_image(comfy.clip_vision.clip_preprocess(pixels, size=32))
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
    path = save_openclip(state_dict, tmp_path / "model.safetensors")
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
