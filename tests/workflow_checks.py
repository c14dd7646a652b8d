"""What the workflow tests share: the generated workflows, their input files (pictures, saved embeds), a validator of
API-format prompts against /object_info, and the small-size settings the stand-ins run at.

The workflows themselves come from scripts/build_workflows.py (the one definition of every graph).
"""

import io
import json
import math
import sys
from pathlib import Path

import numpy
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.append(str(SCRIPTS))

import build_workflows  # noqa: E402  (scripts/)

SDXL_WORKFLOWS = ("08_sdxl_vit_h", "13_sdxl_style_transfer", "14_sdxl_style_and_composition", "21_faceid_sdxl")
FLUX_WORKFLOW = "16_flux_xlabs"
SD3_WORKFLOW = "17_sd35_instantx"
FLUX_INSTANTX_WORKFLOW = "22_flux_instantx"
WORKFLOW_NAMES = tuple(build().name for build in build_workflows.GRAPHS)
SD15_WORKFLOWS = tuple(
    name for name in WORKFLOW_NAMES if name not in (*SDXL_WORKFLOWS, FLUX_WORKFLOW, SD3_WORKFLOW, FLUX_INSTANTX_WORKFLOW)
)
ENCODER_LOADERS = ("CLIPVisionLoader", "DecoupledIPAdapterSigLIPLoader")  # the loaders latent_prompt's `encoder` sets
SMALL_SIZE, SMALL_STEPS = 64, 2
SIZE_INPUTS = {"EmptyLatentImage": ("width", "height"), "EmptySD3LatentImage": ("width", "height"),
               "ImageScale": ("width", "height"), "ResizeImagesByShorterEdge": ("shorter_edge",),
               "CenterCropImages": ("width", "height")}  # fmt: skip
STEP_NODES = ("KSampler", "DecoupledIPAdapterTrain")  # the nodes whose `steps` the small runs lower
TRAINING_WORKFLOW = "23_fine_tune_ip_adapter_sd15"  # trains on the full-size stand-in: run by the API test only
DATASET_PICTURES = 2  # pictures (with captions) in each dataset folder the workflows read
# The nodes the stand-ins cannot run as the workflows name them: the loaders of T5-XXL (Flux's DualCLIPLoader,
# SD3.5's TripleCLIPLoader). ComfyUI always builds T5-XXL at full size (4.7 B parameters), too big for CPU tests, so
# the Flux and SD3 stand-ins read CLIP-L's text alone (devkit/standins.py) and the runs on stand-ins load CLIP-L with
# CLIPLoader: (node type, its stand-in type, stand-in input <- the node's input, fixed stand-in inputs). The
# workflow files keep the official loaders.
STANDIN_SWAPS = (
    ("DualCLIPLoader", "CLIPLoader", {"clip_name": "clip_name2"}, {"type": "stable_diffusion"}),
    ("TripleCLIPLoader", "CLIPLoader", {"clip_name": "clip_name1"}, {"type": "sd3"}),
)
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def editor_workflow(name: str) -> dict:
    return json.loads((build_workflows.WORKFLOWS / f"{name}.json").read_text())


def api_workflow(name: str) -> dict:
    return json.loads((build_workflows.API_FOLDER / f"{name}.json").read_text())


def input_files() -> dict[str, bytes]:
    """Every file the workflows read from the input folder: name -> bytes."""
    return {**input_pictures(), **input_embeds(), **input_datasets()}


def input_datasets() -> dict[str, bytes]:
    """For each dataset folder the workflows read: DATASET_PICTURES 64x64 pictures of two colours, a .txt caption
    beside each."""
    files = {}
    for folder in sorted({folder for build in build_workflows.GRAPHS for folder in build().dataset_folders}):
        for index in range(DATASET_PICTURES):
            rgb = numpy.zeros((SMALL_SIZE, SMALL_SIZE, 3), dtype=numpy.uint8)
            rgb[...] = (200 - 150 * index, 60 + 120 * index, 90)
            rgb[16:48, 16:48] = (240, 240, 240)
            buffer = io.BytesIO()
            Image.fromarray(rgb, "RGB").save(buffer, format="PNG")
            files[f"{folder}/picture_{index}.png"] = buffer.getvalue()
            files[f"{folder}/picture_{index}.txt"] = f"a white square on colour {index}".encode()
    return files


def input_embeds() -> dict[str, bytes]:
    """Saved embeds for every embeds file the workflows load: one image's ViT-H image embeds (random), what the
    stand-in ip-adapter_sd15 reads, in the format IPAdapter Save Embeds writes."""
    import safetensors.torch
    import torch

    from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
    from decoupled_ipadapter.ipadapter_core.embeds_file import embeds_file_content

    embeds = make_embeds(torch.randn(1, 1024, generator=torch.Generator().manual_seed(7)), torch.zeros(1, 1024),
                         clip_output="image_embeds", adapter_variant="ip-adapter_sd15", image_encoder="ViT-H")  # fmt: skip
    tensors, metadata = embeds_file_content(embeds)
    names = sorted({name for build in build_workflows.GRAPHS for name in build().embeds_files})
    return {name: safetensors.torch.save(tensors, metadata=metadata) for name in names}


FACE_PICTURES = (build_workflows.FACE, build_workflows.SECOND_FACE)


def input_pictures() -> dict[str, bytes]:
    """A PNG for every picture name the workflows load (64x64; the picture to edit has a transparent square: the
    inpainting mask; the face pictures a face for the stand-in InsightFace pack, devkit/tiny_insightface.py)."""
    from tiny_insightface import face_picture

    pictures = {}
    for index, name in enumerate(sorted({image for build in build_workflows.GRAPHS for image in build().images})):
        if name in FACE_PICTURES:
            rgb = (255 * face_picture(seed=index, size=SMALL_SIZE)[0].numpy()).round().astype(numpy.uint8)  # [S, S, 3]
            buffer = io.BytesIO()
            Image.fromarray(rgb, "RGB").save(buffer, format="PNG")
            pictures[name] = buffer.getvalue()
            continue
        grid = numpy.indices((SMALL_SIZE, SMALL_SIZE)).sum(axis=0)
        rgba = numpy.zeros((SMALL_SIZE, SMALL_SIZE, 4), dtype=numpy.uint8)
        rgba[..., 0] = (grid * (3 + index)) % 256
        rgba[..., 1] = (grid * 7 + 40 * index) % 256
        rgba[..., 2] = 255 - (grid * 2) % 256
        rgba[..., 3] = 255
        if name == build_workflows.PICTURE_TO_EDIT:
            rgba[16:48, 16:48, 3] = 0  # LoadImage's MASK is 1 - alpha: this square gets repainted
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
        pictures[name] = buffer.getvalue()
    return pictures


def shrunk(prompt: dict, *, size: int = SMALL_SIZE, steps: int = SMALL_STEPS) -> dict:
    """The API prompt at a small picture size and few steps (what random stand-ins on a CPU can run quickly)."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        for name in SIZE_INPUTS.get(node["class_type"], ()):
            node["inputs"][name] = size
        if node["class_type"] in STEP_NODES:
            node["inputs"]["steps"] = steps
        if node["class_type"] == "DecoupledIPAdapterTrain":
            node["inputs"]["batch_size"] = 1
    return prompt


def on_standins(prompt: dict) -> dict:
    """The API prompt as the stand-ins run it: each STANDIN_SWAPS node replaced by its stand-in loader (same id,
    so the links to it stay); other prompts unchanged."""
    prompt = json.loads(json.dumps(prompt))
    for node_type, standin_type, copied, fixed in STANDIN_SWAPS:
        for node in prompt.values():
            if node["class_type"] == node_type:
                node["class_type"] = standin_type
                node["inputs"] = {**{name: node["inputs"][source] for name, source in copied.items()}, **fixed}
    return prompt


def node_of(prompt: dict, class_type: str) -> tuple[str, dict]:
    """The id and node of the prompt's one node of `class_type`."""
    (found,) = [(key, node) for key, node in prompt.items() if node["class_type"] == class_type]
    return found


def latent_prompt(name: str, *, weight: float | None, adapter: str | None = None, encoder: str | None = None,
                  seed: int = 42) -> dict:  # fmt: skip
    """A one-adapter workflow (one KSampler, one Apply IPAdapter) on the stand-ins, saving the sampled latent
    (SaveLatent, node "900") instead of decoding it. `weight` None: the sampler takes the model Apply would have
    patched (no pack node runs); `adapter` and `encoder` replace the files of Load IPAdapter and of the image
    encoder's loader (Load CLIP Vision, or Load SigLIP Vision (pooled))."""
    prompt = on_standins(shrunk(api_workflow(name)))
    sampler_id, sampler = node_of(prompt, "KSampler")
    sampler["inputs"]["seed"] = seed
    _, apply = node_of(prompt, "DecoupledIPAdapterApply")
    if weight is None:
        sampler["inputs"]["model"] = apply["inputs"]["model"]
    else:
        apply["inputs"]["weight"] = weight
    if adapter is not None:
        node_of(prompt, "DecoupledIPAdapterLoader")[1]["inputs"]["ipadapter_name"] = adapter
    if encoder is not None:
        (loader,) = [node for node in prompt.values() if node["class_type"] in ENCODER_LOADERS]
        loader["inputs"]["clip_name"] = encoder
    for class_type in ("SaveImage", "VAEDecode"):
        del prompt[node_of(prompt, class_type)[0]]
    prompt["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": name}}
    return prompt


def node_ids(prompt: dict, class_type: str) -> list[str]:
    """The ids of a prompt's nodes of `class_type`, in the prompt's order."""
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def with_inputs(prompt: dict, changes: dict) -> dict:
    """A copy of `prompt` with node id -> {input: value} set; a value of None removes that (optional) input."""
    prompt = json.loads(json.dumps(prompt))
    for node_id, inputs in changes.items():
        for name, value in inputs.items():
            if value is None:
                del prompt[node_id]["inputs"][name]
            else:
                prompt[node_id]["inputs"][name] = value
    return prompt


def _combo_options(spec) -> list | None:
    kind, options = (list(spec) + [{}])[:2]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return options.get("options", [])
    return None


def _check_widget(where: str, name: str, value, spec) -> list[str]:
    kind, options = (list(spec) + [{}])[:2]
    choices = _combo_options(spec)
    if choices is not None:
        return [] if value in choices else [f"{where}: {name}={value!r} is not one of {choices[:12]}"]
    if kind == "INT" and not (isinstance(value, int) and not isinstance(value, bool)):
        return [f"{where}: {name}={value!r} is not an integer"]
    if kind == "FLOAT" and not (isinstance(value, (int, float)) and math.isfinite(value)):
        return [f"{where}: {name}={value!r} is not a number"]
    if kind in ("INT", "FLOAT"):
        low, high = options.get("min", -math.inf), options.get("max", math.inf)
        return [] if low <= value <= high else [f"{where}: {name}={value} is outside [{low}, {high}]"]
    if kind == "STRING" and not isinstance(value, str):
        return [f"{where}: {name}={value!r} is not a string"]
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return [f"{where}: {name}={value!r} is not a boolean"]
    return []


def validation_errors(prompt: dict, object_info: dict) -> list[str]:
    """Every problem of an API-format prompt against /object_info: unknown classes, missing or unknown inputs,
    links to missing nodes or outputs or of the wrong type, widget values of the wrong type, out of range or not in
    the combo list (ComfyUI 0.3.75 does not check V3 combo values itself)."""
    errors = []
    for node_id, node in prompt.items():
        info = object_info.get(node["class_type"])
        where = f"node {node_id} ({node['class_type']})"
        if info is None:
            errors.append(f"{where}: no such node type on the server")
            continue
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        errors += [f"{where}: input {name!r} is missing" for name in info["input"].get("required", {})
                   if name not in node["inputs"]]  # fmt: skip
        for name, value in node["inputs"].items():
            if name not in specs:
                errors.append(f"{where}: no input named {name!r}")
                continue
            kind, options = (list(specs[name]) + [{}])[:2]
            is_widget = isinstance(kind, list) or (kind in WIDGET_TYPES and not options.get("forceInput"))
            if isinstance(value, list) and not is_widget:
                source = prompt.get(str(value[0]))
                if source is None:
                    errors.append(f"{where}: {name} links to missing node {value[0]}")
                    continue
                outputs = object_info.get(source["class_type"], {}).get("output", [])
                if not (isinstance(value[1], int) and 0 <= value[1] < len(outputs)):
                    errors.append(f"{where}: {name} links to output {value[1]} of {source['class_type']}")
                elif outputs[value[1]] != kind and "*" not in (kind, outputs[value[1]]):
                    errors.append(f"{where}: {name} wants {kind}, gets {outputs[value[1]]}")
            elif is_widget:
                errors += _check_widget(where, name, value, specs[name])
            else:
                errors.append(f"{where}: socket input {name} holds a value, not a link: {value!r}")
    return errors
