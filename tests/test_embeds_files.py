"""IPAdapter Save Embeds / Load Embeds, called as ComfyUI calls V3 nodes, in-process on CPU.

Saved embeds come back bit for bit (both CLIP outputs, fp32 and fp16, with their provenance); files are counted as
SaveImage counts them; a file that is not our embeds (another safetensors file, garbage, empty, damaged, a newer
format, a path out of the input folder) is refused at queue time (validate_inputs) and when run, naming the file;
loaded embeds given to an adapter they do not fit get Apply's usual error. The port's .ipadpt files (one torch.save'd
tensor) are listed anywhere under the input folder and load with the reference's negative (zeros, or the connected
encoder on zero pixels); a code-carrying pickle is refused unrun, and anything but one float tensor of rank 2 or 3
is refused naming the file.
"""

import json
import os
import shlex
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import SD15_TEXT_WIDTH, adapter_state_dict, layer_hidden_sizes, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.embeds_file import embeds_file_content
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

pytestmark = pytest.mark.host

INTEGER_OF = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@pytest.fixture(scope="module")
def nodes(comfy_host):
    from decoupled_ipadapter.nodes import apply, embeds_files

    return {"save": embeds_files.SaveEmbeds, "load": embeds_files.LoadEmbeds, "apply": apply.ApplyIPAdapter}


@pytest.fixture
def folders(comfy_host):
    """ComfyUI's input and output folders, emptied of what a test wrote."""
    import folder_paths

    directories = {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory()}
    yield directories
    for directory in directories.values():
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def run(node, **inputs):
    with torch.inference_mode():
        return node.execute(**inputs)


def random_embeds(shape, *, dtype=torch.float32, seed=0, single_negative=False, **provenance):
    generator = torch.Generator().manual_seed(seed)
    positive = torch.randn(shape, generator=generator).to(dtype)
    negative = torch.randn((1, *shape[1:]) if single_negative else shape, generator=generator).to(dtype)
    clip_output = "image_embeds" if len(shape) == 2 else "penultimate_hidden_states"
    return make_embeds(positive, negative, clip_output=clip_output, **provenance)


def save(nodes, embeds, prefix="ipadapter_embeds/test") -> str:
    """Run Save Embeds; returns the saved file's path, from the node's UI result."""
    import folder_paths

    (saved,) = run(nodes["save"], embeds=embeds, filename_prefix=prefix).ui["embeds"]
    assert saved["type"] == "output"
    return os.path.join(folder_paths.get_output_directory(), saved["subfolder"], saved["filename"])


def to_input(path: str, name: str | None = None) -> str:
    import folder_paths

    name = name or os.path.basename(path)
    shutil.copy(path, os.path.join(folder_paths.get_input_directory(), name))
    return name


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(INTEGER_OF[tensor.dtype])


CASES = {
    "vit-h image embeds, fp32": dict(shape=(3, 1024), adapter_variant="ip-adapter_sd15", image_encoder="ViT-H"),
    "hidden states, fp16": dict(shape=(2, 5, 1280), dtype=torch.float16, adapter_variant="ip-adapter-plus_sd15",
                                image_encoder="ViT-H"),
    "one negative for all, bf16": dict(shape=(4, 1280), dtype=torch.bfloat16, single_negative=True),
    "combined provenance": dict(shape=(1, 1024), adapter_variant="ip-adapter_sd15 + ip-adapter_sdxl_vit-h"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_saved_embeds_load_back_bit_for_bit(nodes, folders, case):
    embeds = random_embeds(seed=len(case), **CASES[case])
    name = to_input(save(nodes, embeds))
    assert name in nodes["load"].define_schema().inputs[0].options
    assert nodes["load"].validate_inputs(embeds_file=name) is True
    (loaded,) = run(nodes["load"], embeds_file=name).result
    for part in ("positive", "negative"):
        original, back = getattr(embeds, part), getattr(loaded, part)
        assert back.dtype == original.dtype and back.shape == original.shape, part
        assert torch.equal(bits(back), bits(original)), f"{part} changed in the round trip"
    provenance = ("clip_output", "adapter_variant", "image_encoder")
    assert [getattr(loaded, key) for key in provenance] == [getattr(embeds, key) for key in provenance]


def test_files_are_counted_like_saveimage_and_record_where_the_embeds_came_from(nodes, folders):
    embeds = random_embeds((1, 1024), adapter_variant="ip-adapter_sd15", image_encoder="ViT-H")
    first, second = save(nodes, embeds, "refs/cat"), save(nodes, embeds, "refs/cat")
    assert [os.path.relpath(path, folders["output"]) for path in (first, second)] == [
        os.path.join("refs", "cat_00001_.safetensors"),
        os.path.join("refs", "cat_00002_.safetensors"),
    ]
    with safe_open(first, framework="pt") as opened:
        metadata, keys = opened.metadata(), set(opened.keys())
    assert keys == {"positive", "negative"}
    assert metadata == {"decoupled_ipadapter_embeds": "1", "clip_output": "image_embeds",
                        "adapter_variant": "ip-adapter_sd15", "image_encoder": "ViT-H"}  # fmt: skip


def test_the_prompt_and_workflow_are_saved_as_comfyui_saves_them(nodes, folders):
    from comfy_api.latest import io

    prompt, workflow = {"1": {"class_type": "DecoupledIPAdapterSaveEmbeds"}}, {"nodes": [], "links": []}

    class ExecutedSaveEmbeds(nodes["save"]):  # what ComfyUI's executor gives the node: the hidden inputs
        hidden = io.HiddenHolder.from_dict({io.Hidden.prompt: prompt, io.Hidden.extra_pnginfo: {"workflow": workflow}})

    path = save({"save": ExecutedSaveEmbeds}, random_embeds((1, 1024)))
    with safe_open(path, framework="pt") as opened:
        metadata = opened.metadata()
    assert json.loads(metadata["prompt"]) == prompt and json.loads(metadata["workflow"]) == workflow
    assert metadata["decoupled_ipadapter_embeds"] == "1"


def test_a_prefix_outside_the_output_folder_is_refused(nodes, folders):
    with pytest.raises(IPAdapterError, match=r"^IPAdapter Save Embeds: filename_prefix '\.\./escaped/embeds'"):
        run(nodes["save"], embeds=random_embeds((1, 1024)), filename_prefix="../escaped/embeds")
    assert not os.path.exists(os.path.join(os.path.dirname(folders["output"]), "escaped"))


def write_not_ours(directory: str) -> dict[str, str]:
    """Files in the input folder that are not our embeds: name -> what the refusal must say."""
    save_file({"ip_adapter.1.to_k_ip.weight": torch.zeros(4, 8)}, os.path.join(directory, "ip-adapter_sd15.safetensors"))
    with open(os.path.join(directory, "garbage.safetensors"), "wb") as file:
        file.write(b"\x07\x00\x00\x00\x00\x00\x00\x00not json")
    open(os.path.join(directory, "empty.safetensors"), "wb").close()
    tensors, metadata = embeds_file_content(random_embeds((1, 1024)))
    save_file(tensors, os.path.join(directory, "future.safetensors"), metadata={**metadata, "decoupled_ipadapter_embeds": "2"})
    return {
        "ip-adapter_sd15.safetensors": "not Decoupled IP-Adapter embeds",
        "garbage.safetensors": "cannot be read as safetensors",
        "empty.safetensors": "is empty",
        "future.safetensors": "format version 2",
        "gone.safetensors": "does not exist",
        "../outside.safetensors": "leads outside ComfyUI's input folder",
    }


def test_a_file_that_is_not_our_embeds_is_refused_at_queue_time_and_when_run(nodes, folders):
    open(os.path.join(os.path.dirname(folders["input"]), "outside.safetensors"), "wb").close()
    try:
        for name, reason in write_not_ours(folders["input"]).items():
            message = nodes["load"].validate_inputs(embeds_file=name)
            assert isinstance(message, str) and reason in message, (name, message)
            assert os.path.basename(name) in message, f"the refusal must name the file: {message}"
            assert "IPAdapter Save Embeds" in message or "Update the pack" in message or "input folder" in message
            with pytest.raises(IPAdapterError) as raised:
                run(nodes["load"], embeds_file=name)
            assert str(raised.value).startswith("IPAdapter Load Embeds: ") and reason in str(raised.value), name
    finally:
        os.remove(os.path.join(os.path.dirname(folders["input"]), "outside.safetensors"))
    assert nodes["load"].validate_inputs(embeds_file=None) is True, "a linked input is checked when it runs"


@pytest.mark.parametrize(
    "tensors, clip_output, reason",
    [
        ({"positive": torch.zeros(1, 8)}, "image_embeds", "holds the tensors ['positive']"),
        ({"positive": torch.zeros(2, 8), "negative": torch.zeros(3, 8)}, "image_embeds", "do not fit together"),
        ({"positive": torch.zeros(1, 8), "negative": torch.zeros(1, 8)}, "penultimate_hidden_states", "do not fit together"),
        ({"positive": torch.zeros(1, 8), "negative": torch.zeros(1, 8)}, "pooled", "'pooled'"),
        ({"positive": torch.zeros(1, 8, dtype=torch.int32), "negative": torch.zeros(1, 8, dtype=torch.int32)},
         "image_embeds", "not floating point"),
    ],
    ids=["one-tensor", "counts-differ", "wrong-rank", "unknown-output", "integers"],
)  # fmt: skip
def test_damaged_embeds_files_are_refused_naming_the_file(nodes, folders, tensors, clip_output, reason):
    metadata = {"decoupled_ipadapter_embeds": "1", "clip_output": clip_output}
    save_file(tensors, os.path.join(folders["input"], "damaged.safetensors"), metadata=metadata)
    with pytest.raises(IPAdapterError) as raised:
        run(nodes["load"], embeds_file="damaged.safetensors")
    assert "'damaged.safetensors'" in str(raised.value) and reason in str(raised.value)


def test_only_safetensors_files_of_the_input_folder_are_listed(nodes, folders):
    for name in ("b.safetensors", "a.SAFETENSORS", "picture.png", "notes.txt"):
        open(os.path.join(folders["input"], name), "wb").close()
    os.mkdir(os.path.join(folders["input"], "folder.safetensors"))
    assert nodes["load"].define_schema().inputs[0].options == ["a.SAFETENSORS", "b.safetensors"]


def test_the_fingerprint_follows_the_file_content(nodes, folders):
    path = save(nodes, random_embeds((1, 1024), seed=1))
    name = to_input(path, "changing.safetensors")
    first = nodes["load"].fingerprint_inputs(embeds_file=name)
    assert nodes["load"].fingerprint_inputs(embeds_file=name) == first
    to_input(save(nodes, random_embeds((1, 1024), seed=2)), name)
    assert nodes["load"].fingerprint_inputs(embeds_file=name) != first


@pytest.fixture(scope="module")
def sd15_model_and_adapters(comfy_host, tmp_path_factory):
    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.memory import manage

    model = tiny_comfy_model("SD1.5", seed=8)
    directory = tmp_path_factory.mktemp("embeds_files_adapters")
    adapters = {}
    for seed, (name, projection, width) in enumerate(
        (("ip-adapter_sd15", "linear", 1024), ("ip-adapter_sd15_vit-G", "linear", 1280), ("ip-adapter-full-face_sd15", "mlp", 1280))
    ):
        flat = adapter_state_dict(projection, hidden_sizes=layer_hidden_sizes(model), text_width=SD15_TEXT_WIDTH,
                                  seed=seed, embedding_dim=width, dtype=torch.float16)  # fmt: skip
        save_file(flat, str(directory / f"{name}.safetensors"))
        adapters[name] = manage(load_adapter(str(directory / f"{name}.safetensors")))
    return model, adapters


def test_loaded_embeds_apply_and_a_mismatched_adapter_gets_the_usual_error(nodes, folders, sd15_model_and_adapters):
    model, adapters = sd15_model_and_adapters
    saved = random_embeds((1, 1024), adapter_variant="ip-adapter_sd15", image_encoder="ViT-H")
    (loaded,) = run(nodes["load"], embeds_file=to_input(save(nodes, saved))).result
    apply = dict(model=model, embeds=loaded, weight=1.0, start_at=0.0, end_at=1.0)

    (patched,) = run(nodes["apply"], ipadapter=adapters["ip-adapter_sd15"], **apply).result
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    layer_patches = [patch for key, patch in patches.items() if len(key) == 3]  # (block, id) keys alias them for other packs
    assert len(layer_patches) == 16 and all(patch.terms[0].embeds is loaded for patch in layer_patches)

    with pytest.raises(IPAdapterError) as raised:
        run(nodes["apply"], ipadapter=adapters["ip-adapter_sd15_vit-G"], **apply)
    message = str(raised.value)
    assert message.startswith("Apply IPAdapter: 'ip-adapter_sd15_vit-G.safetensors' (ip-adapter_sd15_vit-G) needs")
    assert "these (encoded for ip-adapter_sd15 with ViT-H) come from ViT-H" in message and "CLIPVisionLoader" in message
    with pytest.raises(IPAdapterError, match=r"reads the CLIP penultimate hidden states, but these embeds \(encoded for "
                       r"ip-adapter_sd15 with ViT-H\) hold image embeds"):  # fmt: skip
        run(nodes["apply"], ipadapter=adapters["ip-adapter-full-face_sd15"], **apply)
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


# --- ComfyUI_IPAdapter_plus's .ipadpt files: torch.save of one tensor, read as weights only --------------------------


def write_port_file(relative: str, content) -> str:
    """`content` torch.save'd as the port's IPAdapter Save Embeds writes it, at `relative` in the input folder."""
    import folder_paths

    path = os.path.join(folder_paths.get_input_directory(), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(content, path)
    return relative


@pytest.fixture(scope="module")
def port_encoders(comfy_host, tmp_path_factory):
    from tiny_clip_vision import tiny_clip_vision

    directory = tmp_path_factory.mktemp("port_embeds_encoders")
    return {name: tiny_clip_vision(name, directory, seed=index) for index, name in enumerate(("ViT-H", "ViT-bigG"))}


def test_port_files_are_listed_anywhere_under_the_input_folder(nodes, folders):
    for relative in ("refs/cats/cat_00001.ipadpt", "b.ipadpt", "Z.IPADPT"):
        write_port_file(relative, torch.zeros(1, 8))
    open(os.path.join(folders["input"], "a.safetensors"), "wb").close()
    open(os.path.join(folders["input"], "refs", "nested.safetensors"), "wb").close()  # ours: the folder itself only
    assert nodes["load"].define_schema().inputs[0].options == sorted(
        ["Z.IPADPT", "a.safetensors", "b.ipadpt", os.path.join("refs", "cats", "cat_00001.ipadpt")]
    )


def test_a_port_file_of_image_embeds_loads_with_a_zero_negative(nodes, folders):
    positive = torch.randn(2, 1024, generator=torch.Generator().manual_seed(3)).to(torch.float16)  # [N, E]
    name = write_port_file(os.path.join("port", "ref_00001.ipadpt"), positive)
    assert nodes["load"].validate_inputs(embeds_file=name) is True
    (loaded,) = run(nodes["load"], embeds_file=name).result
    assert loaded.clip_output == "image_embeds" and (loaded.adapter_variant, loaded.image_encoder) == ("", "")
    assert loaded.positive.dtype == torch.float16 and torch.equal(loaded.positive, positive)
    assert loaded.negative.shape == (2, 1024) and loaded.negative.dtype == torch.float16
    assert torch.count_nonzero(loaded.negative) == 0


def test_a_port_file_of_hidden_states_takes_its_negative_from_the_connected_encoder(nodes, folders, port_encoders):
    from tiny_clip_vision import TOKENS

    clip_vision = port_encoders["ViT-H"]
    positive = torch.randn(3, TOKENS, 1280, generator=torch.Generator().manual_seed(4))  # [N, S, E]
    name = write_port_file("plus_00001.ipadpt", positive)
    (loaded,) = run(nodes["load"], embeds_file=name, clip_vision=clip_vision).result
    assert loaded.clip_output == "penultimate_hidden_states" and torch.equal(loaded.positive, positive)
    size = clip_vision.image_size
    with torch.inference_mode():
        zero_pixels = clip_vision.model(pixel_values=torch.zeros(1, 3, size, size), intermediate_output=-2)[1]  # [1, S, E]
    assert loaded.negative.shape == positive.shape
    for row in loaded.negative:
        torch.testing.assert_close(row, zero_pixels[0], rtol=1e-5, atol=1e-6)

    with pytest.raises(IPAdapterError) as raised:
        run(nodes["load"], embeds_file=name)
    message = str(raised.value)
    assert message.startswith("IPAdapter Load Embeds: 'plus_00001.ipadpt' holds penultimate hidden states")
    assert "to clip_vision" in message and "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in message
    with pytest.raises(IPAdapterError, match=r"'plus_00001.ipadpt' holds hidden states of 5 tokens of width 1280, but "
                       r"the CLIP vision model connected to clip_vision gives 5 of width 1664"):  # fmt: skip
        run(nodes["load"], embeds_file=name, clip_vision=port_encoders["ViT-bigG"])


def test_a_port_file_that_carries_code_is_refused_and_never_run(nodes, folders, tmp_path):
    from test_bad_inputs import RunsAShellCommand

    marker = tmp_path / "code_was_run"
    name = write_port_file("evil.ipadpt", RunsAShellCommand(f"touch {shlex.quote(str(marker))}"))
    message = nodes["load"].validate_inputs(embeds_file=name)
    assert isinstance(message, str) and "'evil.ipadpt' was refused: it is a pickle that carries code" in message
    with pytest.raises(IPAdapterError, match="'evil.ipadpt' was refused: it is a pickle that carries code"):
        run(nodes["load"], embeds_file=name)
    assert not marker.exists(), "loading the file ran the code in its pickle"


@pytest.mark.parametrize(
    "content, reason",
    [
        (torch.zeros(1024), "float32 tensor of shape [1024]"),
        (torch.zeros(1, 1, 5, 1280), "float32 tensor of shape [1, 1, 5, 1280]"),
        (torch.zeros(0, 1024), "float32 tensor of shape [0, 1024]"),
        (torch.zeros(1, 1024, dtype=torch.int64), "int64 tensor"),
        ({"positive": torch.zeros(1, 1024)}, "holds a dict, not the one tensor"),
        ("truncated", "cannot be read"),
    ],
    ids=["rank-1", "rank-4", "no-images", "integers", "a-dict", "truncated"],
)
def test_a_port_file_that_is_not_one_float_tensor_of_rank_2_or_3_is_refused(nodes, folders, content, reason):
    if content == "truncated":
        path = os.path.join(folders["input"], write_port_file("wrong.ipadpt", torch.zeros(4, 1024)))
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
    else:
        write_port_file("wrong.ipadpt", content)
    message = nodes["load"].validate_inputs(embeds_file="wrong.ipadpt")
    assert isinstance(message, str) and "'wrong.ipadpt'" in message and reason in message, message
    with pytest.raises(IPAdapterError) as raised:
        run(nodes["load"], embeds_file="wrong.ipadpt")
    assert str(raised.value).startswith("IPAdapter Load Embeds: ") and reason in str(raised.value)
