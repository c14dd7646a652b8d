"""The example workflows (workflows/): generated, not drifted, listed as templates, valid, and they run.

- The committed files are exactly what scripts/build_workflows.py writes, and its node-definition snapshot still
  matches the live /object_info (so widget order and socket types cannot drift from ComfyUI's).
- /api/workflow_templates lists the pack with every editor-format workflow, and the files are served.
- Every API-format workflow validates against /object_info (classes, inputs, link types, value ranges, combo
  lists: the model file names must be the stand-ins' official names) and runs to the end on a real server with
  the stand-ins at 64x64 and 2 steps (the SDXL ones: tests/test_workflows_sdxl.py); embeds it saves are in the
  output folder, in our format, with the prompt that made them. Their file nodes refuse a missing adapter file or a
  file that is not our embeds when the prompt is queued, with the message that says what to do.
- The regional workflow's picture changes when either reference or the masks are left out.
"""

import io
import json
import re

import numpy
import pytest
import torch
from PIL import Image
from server_harness import (
    PACK_LINK,
    REJECTED,
    comfy_server,
    object_info,
    prompt_error,
    run_prompt,
    saved_latent,
    standin_models,
    upload_image,
)
from workflow_checks import (
    SD15_WORKFLOWS,
    SMALL_SIZE,
    TRAINING_WORKFLOW,
    WORKFLOW_NAMES,
    api_workflow,
    build_workflows,
    editor_workflow,
    input_files,
    latent_prompt,
    on_standins,
    node_ids,
    shrunk,
    validation_errors,
    with_inputs,
)

REGIONAL_WORKFLOW = "15_regional_two_references"
# Run from the editor page only (tests/test_workflows_browser.py, on both front-ends: the page's prompt must equal the
# API file, and it runs); here they are validated against /object_info, not run a second time (CI time).
RUN_FROM_THE_PAGE_ONLY = ("19_faceid_plusv2_and_image_prompt", "20_faceid_portrait")


def test_committed_workflows_are_what_the_generator_writes():
    stale = build_workflows.stale_files(build_workflows.rendered_files())
    assert not stale, f"run `python scripts/build_workflows.py`; out of date: {stale}"


def test_every_workflow_exists_in_both_formats_with_the_same_nodes():
    for name in WORKFLOW_NAMES:
        editor = editor_workflow(name)
        server_nodes = {str(node["id"]): node["type"] for node in editor["nodes"] if node["type"] != "MarkdownNote"}
        assert server_nodes == {key: node["class_type"] for key, node in api_workflow(name).items()}, name
        notes = [node for node in editor["nodes"] if node["type"] == "MarkdownNote"]
        files = {f"models/{entry['directory']}/{entry['name']}" for node in editor["nodes"]
                 for entry in node["properties"].get("models", [])}  # fmt: skip
        assert len(notes) == 1 and files and all(f"`{file}`" in notes[0]["widgets_values"][0] for file in files), name


MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".bin", ".pth", ".pt", ".ckpt")


def test_every_loader_names_its_file_url_and_folder_from_the_one_table():
    """Each widget value that is a model file has a `properties.models` entry on its node (the front-end's
    missing-models panel reads it), with the URL and folder of ipadapter_core/model_sources.py, and nowhere else
    in the workflows does a download URL differ from that table's."""
    from decoupled_ipadapter.ipadapter_core.model_sources import MODEL_SOURCES
    from decoupled_ipadapter.ipadapter_core.presets import preset_named

    table = {(source.folder, source.name): source.url for source in MODEL_SOURCES}
    for name in WORKFLOW_NAMES:
        for node in editor_workflow(name)["nodes"]:
            files = {value for value in node["widgets_values"] if isinstance(value, str) and value.endswith(MODEL_FILE_SUFFIXES)}
            if node["type"] in ("DecoupledIPAdapterLoadEmbeds", "DecoupledIPAdapterTrain"):  # a file the user
                files = set()  # saved in input/ or the file training writes: not a download
            if node["type"] == "DecoupledIPAdapterUnifiedLoader":  # its preset names the files
                preset = preset_named(node["widgets_values"][0])
                files = {preset.adapter.name, preset.encoder.name}
                assert editor_workflow(name)["models"] == node["properties"]["models"], f"{name}: workflow-level models"
            entries = node["properties"].get("models", [])
            where = f"{name} node {node['id']} ({node['type']})"
            assert {entry["name"] for entry in entries} == files, f"{where}: properties.models {entries} for files {files}"
            for entry in entries:
                assert set(entry) == {"name", "url", "directory"}, where
                assert table.get((entry["directory"], entry["name"])) == entry["url"], f"{where}: {entry} is not in the table"
        urls = set(re.findall(r"https://[^)\s\"'<>]+", (build_workflows.WORKFLOWS / f"{name}.json").read_text()))
        downloads = {url for url in urls if url.endswith(MODEL_FILE_SUFFIXES)}
        assert downloads <= set(table.values()), f"{name}: download links not in the table: {downloads - set(table.values())}"


def test_the_loader_check_catches_a_loader_without_models():
    """The generator refuses a graph whose loaders name a file its note does not list."""
    graph = build_workflows.GRAPHS[0]()
    graph.models = graph.models[:-1]
    with pytest.raises(ValueError, match="its loaders name"):
        build_workflows.editor_format(graph, build_workflows.load_node_defs())


def test_a_broken_prompt_is_caught_by_the_validator():
    """The validator can fail: each kind of fault is reported."""
    info = {
        "A": {"input": {"required": {"n": ["INT", {"min": 1, "max": 4}], "c": [["x", "y"]]}}, "output": ["IMAGE"]},
        "B": {"input": {"required": {"image": ["MODEL"], "m": ["COMBO", {"options": ["p"]}]}}, "output": []},
    }
    prompt = {
        "1": {"class_type": "A", "inputs": {"n": 9, "c": "z"}},
        "2": {"class_type": "B", "inputs": {"image": ["1", 0], "m": "q"}},
        "3": {"class_type": "Nope", "inputs": {}},
        "4": {"class_type": "B", "inputs": {"image": ["7", 0], "extra": 1}},
    }
    errors = "\n".join(validation_errors(prompt, info))
    for fragment in ("outside [1, 4]", "'z' is not one of", "wants MODEL, gets IMAGE", "'q' is not one of",
                     "no such node type", "missing node 7", "no input named 'extra'", "input 'm' is missing"):  # fmt: skip
        assert fragment in errors, (fragment, errors)


@pytest.fixture(scope="module")
def models():
    return standin_models(groups=("demo", "workflows"))


def upload_inputs(server) -> None:
    for name, data in input_files().items():
        assert upload_image(server, data, name) == name


@pytest.fixture(scope="module")
def sd15_server(models):
    with comfy_server(models_dir=models) as server:
        upload_inputs(server)
        yield server


def _live_node_defs(server) -> tuple[str, dict]:
    version = server.client.system_stats()["system"]["comfyui_version"]
    return version, build_workflows.node_def_subset(object_info(server), build_workflows.used_node_types())


@pytest.mark.server
def test_node_definition_snapshot_of_this_host_matches_the_live_server(sd15_server):
    """Each tested ComfyUI keeps its own snapshot (core nodes' titles and outputs change between versions)."""
    version, live = _live_node_defs(sd15_server)
    path = build_workflows.node_defs_path(version)
    assert path.is_file() and live == build_workflows.load_node_defs(path), (
        f"run `COMFYUI_DIR=<ComfyUI {version}> python scripts/build_workflows.py --refresh-node-defs`"
    )


@pytest.mark.server
def test_the_workflows_inputs_are_the_same_on_this_host(sd15_server):
    """The workflows are written once, from the first host's definitions: every node they use must take the same
    inputs, in the same order, with the same widgets, on this host."""
    _, live = _live_node_defs(sd15_server)
    written_from = build_workflows.load_node_defs()
    differing = [node for node in written_from if live[node]["inputs"] != written_from[node]["inputs"]]
    assert not differing, f"these nodes take other inputs on this host: {differing}"


def test_the_workflows_inputs_are_the_same_in_every_kept_snapshot():
    """Hosts CI no longer runs (0.28.2) stay supported as data: the workflows, written from the first host's
    definitions, use nodes that take the same inputs in every snapshot of scripts/node_defs/. A snapshot holds the
    nodes the workflows used when it was taken: the nodes of later workflows (23's training and dataset nodes,
    after 0.28.2's archive was gone) are checked where a snapshot has them, and most workflows are all there."""
    written_from = build_workflows.load_node_defs()
    snapshots = sorted(build_workflows.NODE_DEFS_FOLDER.glob("*.json"))
    assert {path.stem for path in snapshots} >= {"0.3.75", "0.28.2"}
    for path in snapshots:
        kept = build_workflows.load_node_defs(path)
        assert len(set(kept) & set(written_from)) >= 31, f"{path.name} lacks the nodes of the first 17 workflows"
        differing = [node for node in written_from if node in kept and kept[node]["inputs"] != written_from[node]["inputs"]]
        assert not differing, f"{path.name}: these nodes take other inputs there: {differing}"


@pytest.mark.server
@pytest.mark.frontend
def test_the_pack_templates_are_listed_and_served(sd15_server):
    import requests

    listed = requests.get(f"{sd15_server.url}/api/workflow_templates", timeout=30).json()
    assert sorted(listed.get(PACK_LINK, [])) == sorted(WORKFLOW_NAMES), listed
    for name in WORKFLOW_NAMES:
        served = requests.get(f"{sd15_server.url}/api/workflow_templates/{PACK_LINK}/{name}.json", timeout=30)
        assert served.status_code == 200, name
        assert served.json() == editor_workflow(name)


def validate(server, name: str) -> dict:
    """The workflow validates as written and as the stand-ins run it (workflow_checks.on_standins): that prompt."""
    prompt = shrunk(api_workflow(name))
    info = object_info(server)
    errors = validation_errors(prompt, info) + validation_errors(on_standins(prompt), info)
    assert not errors, f"{name}:\n" + "\n".join(errors)
    return on_standins(prompt)


def validate_and_run(server, name: str) -> None:
    """The workflow validates as written and as the stand-ins run it, and runs."""
    prompt = validate(server, name)
    entry = run_prompt(server, prompt)
    saved = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    images = {node_id: entry["outputs"].get(node_id, {}).get("images", []) for node_id in saved}
    assert saved and all(len(found) == 1 for found in images.values()), f"{name}: {images}"
    for found in images.values():
        picture = Image.open(io.BytesIO(server.client.fetch(found[0])))
        assert picture.size == (SMALL_SIZE, SMALL_SIZE), (name, picture.size)
    for node_id, node in prompt.items():
        if node["class_type"] == "DecoupledIPAdapterSaveEmbeds":
            check_saved_embeds(server, prompt, entry["outputs"].get(node_id, {}).get("embeds", []), name)
        if node["class_type"] == "DecoupledIPAdapterTrain":
            check_trained_file(server, prompt, entry, node_id)


def check_trained_file(server, prompt: dict, entry: dict, train_id: str) -> None:
    """Train IPAdapter saved an official-format file in the server's models/ipadapter (not the stand-ins' folder),
    different from the file it fine-tuned, its training state (the steps done) beside it, and the loss curve shows."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter

    inputs = prompt[train_id]["inputs"]
    path = server.base / "models" / "ipadapter" / inputs["filename"]
    assert load_adapter(str(path)).spec.variant == "ip-adapter_sd15"
    start = prompt[inputs["ipadapter"][0]]["inputs"]["ipadapter_name"]
    started_from = load_file(str(standin_models() / "ipadapter" / start))
    trained = load_file(str(path))
    assert trained.keys() == started_from.keys() and any(not torch.equal(trained[key], started_from[key]) for key in trained)
    with safe_open(f"{path}.training", framework="pt") as state:
        assert state.metadata()["steps"] == str(inputs["steps"])
    (preview,) = [key for key, node in prompt.items() if node["class_type"] == "PreviewImage"]
    assert len(entry["outputs"][preview]["images"]) == 1, entry["outputs"]


def check_lambda_zero_is_plain_and_weight_acts(server, name: str, *, weight: float) -> None:
    """One-adapter workflow `name` on the stand-ins, sampled latents compared (workflow_checks.latent_prompt):
    λ = 0 gives exactly the latent without our nodes, λ = `weight` another one."""
    plain = saved_latent(server, latent_prompt(name, weight=None))
    at_zero = saved_latent(server, latent_prompt(name, weight=0.0))
    guided = saved_latent(server, latent_prompt(name, weight=weight))
    assert plain.shape == (1, 16, 8, 8) and torch.isfinite(plain).all()
    assert torch.equal(at_zero, plain)
    change = (guided - plain).abs().max().item()
    assert change > 1e-3 * plain.abs().max().item(), change


def check_refused_then_next_runs(server, name: str, *, expected: str, weight: float, **files) -> None:
    """Workflow `name` with other files (latent_prompt's `adapter`, `encoder`) fails with a message holding
    `expected`, and the server then runs the workflow as written (another seed: not a cached result)."""
    message = prompt_error(server, latent_prompt(name, weight=weight, **files))
    assert expected in message, message
    latent = saved_latent(server, latent_prompt(name, weight=weight, seed=43))
    assert latent.shape == (1, 16, 8, 8) and torch.isfinite(latent).all()


def saved_picture(server, prompt: dict) -> numpy.ndarray:
    """Runs `prompt` (one SaveImage) and returns its picture as `[H, W, 3]` uint8."""
    entry = run_prompt(server, prompt)
    (save,) = node_ids(prompt, "SaveImage")
    (image,) = entry["outputs"][save]["images"]
    return numpy.asarray(Image.open(io.BytesIO(server.client.fetch(image))).convert("RGB"))


def assert_differs(picture: numpy.ndarray, others: dict, name: str) -> None:
    """`picture` differs from each of `others` (label -> picture): what the label leaves out changes the result."""
    same = [label for label, other in others.items() if numpy.array_equal(picture, other)]
    assert not same, f"{name}: the same picture without {same}"


def check_saved_embeds(server, prompt: dict, saved: list, name: str) -> None:
    """One embeds file per Save Embeds run, in the output folder: it loads as our embeds, from the stand-in
    ip-adapter_sd15 with ViT-H, and carries the prompt that made it."""
    from safetensors import safe_open

    from decoupled_ipadapter.ipadapter_core.embeds_file import read_embeds_file

    assert len(saved) == 1 and saved[0]["type"] == "output", f"{name}: {saved}"
    path = server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    embeds = read_embeds_file(str(path))
    assert (embeds.adapter_variant, embeds.image_encoder, tuple(embeds.positive.shape)) == ("ip-adapter_sd15", "ViT-H", (1, 1024))
    with safe_open(str(path), framework="pt") as opened:
        recorded = json.loads(opened.metadata()["prompt"])  # ComfyUI adds its own keys (is_changed) to each node
    assert {key: {part: recorded[key][part] for part in ("class_type", "inputs")} for key in recorded} == {
        key: {part: node[part] for part in ("class_type", "inputs")} for key, node in prompt.items()
    }, f"{name}: the saved prompt differs"


@pytest.mark.server
@pytest.mark.parametrize("name", [name for name in SD15_WORKFLOWS if name not in RUN_FROM_THE_PAGE_ONLY])
def test_api_workflow_validates_and_runs(sd15_server, name):
    validate_and_run(sd15_server, name)


@pytest.mark.server
@pytest.mark.parametrize("name", RUN_FROM_THE_PAGE_ONLY)
def test_api_workflow_validates(sd15_server, name):
    assert name in SD15_WORKFLOWS
    validate(sd15_server, name)


@pytest.mark.server
def test_regional_references_each_act_in_their_masks(sd15_server):
    """15_regional_two_references: the picture differs from each reference alone (the other Apply left out) and from
    the two references unmasked, so both image prompts and both masks reach the sampler."""
    prompt = shrunk(api_workflow(REGIONAL_WORKFLOW))
    (sampler,) = node_ids(prompt, "KSampler")
    left, right = node_ids(prompt, "DecoupledIPAdapterApply")
    base_model = prompt[left]["inputs"]["model"]
    regional = saved_picture(sd15_server, prompt)
    others = {
        "the right reference": with_inputs(prompt, {sampler: {"model": [left, 0]}}),
        "the left reference": with_inputs(prompt, {right: {"model": base_model}}),
        "the masks": with_inputs(prompt, {left: {"attn_mask": None}, right: {"attn_mask": None}}),
    }
    assert_differs(regional, {label: saved_picture(sd15_server, other) for label, other in others.items()}, REGIONAL_WORKFLOW)


@pytest.mark.server
def test_missing_models_and_bad_embeds_files_are_refused_when_queued(sd15_server):
    import safetensors.torch
    import torch

    prompt = shrunk(api_workflow("11_unified_loader"))
    (loader,) = [node for node in prompt.values() if node["class_type"] == "DecoupledIPAdapterUnifiedLoader"]
    loader["inputs"]["preset"] = "SDXL plus-face ViT-H"  # its adapter is not among the stand-ins; its encoder is
    message = prompt_error(sd15_server, prompt)
    assert message.startswith(REJECTED), message
    assert "ip-adapter-plus-face_sdxl_vit-h.safetensors: put it in the ipadapter model folder" in message
    assert "https://huggingface.co/h94/IP-Adapter/resolve/main/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors" in message
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors:" not in message, "the encoder is there"

    not_embeds = safetensors.torch.save({"ip_adapter.1.to_k_ip.weight": torch.zeros(2, 2)})
    upload_image(sd15_server, not_embeds, "not_embeds.safetensors")
    for name, reason in (("not_embeds.safetensors", "not Decoupled IP-Adapter embeds"), ("gone.safetensors", "does not exist")):
        prompt = shrunk(api_workflow("12_save_and_load_embeds"))
        (loader,) = [node for node in prompt.values() if node["class_type"] == "DecoupledIPAdapterLoadEmbeds"]
        loader["inputs"]["embeds_file"] = name
        # only the loading branch: with a second, valid output ComfyUI would run that one and skip this
        prompt = {key: node for key, node in prompt.items() if node["class_type"] != "DecoupledIPAdapterSaveEmbeds"}
        message = prompt_error(sd15_server, prompt)
        assert message.startswith(REJECTED) and f"'{name}'" in message and reason in message, message


@pytest.mark.server
def test_faceid_bad_inputs_are_refused_and_the_server_keeps_serving(sd15_server):
    """No face in the picture, a FaceID file in Encode Image, a file that is not FaceID in Encode Face, a missing
    InsightFace pack, a damaged ONNX file: each refused with what to do (at queue time where ComfyUI can), and the
    FaceID workflow still runs afterwards."""
    dark = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 20, 20)).save(dark, format="PNG")
    upload_image(sd15_server, dark.getvalue(), "no_face.png")
    faceid = shrunk(api_workflow("18_faceid"))
    (picture,) = node_ids(faceid, "LoadImage")
    (adapter,) = node_ids(faceid, "DecoupledIPAdapterLoader")
    (insightface,) = node_ids(faceid, "DecoupledIPAdapterInsightFaceLoader")
    message = prompt_error(sd15_server, with_inputs(faceid, {picture: {"image": "no_face.png"}}))
    assert "IPAdapter Encode Face: No face was found in image 0 of the batch" in message, message
    message = prompt_error(sd15_server, with_inputs(faceid, {adapter: {"ipadapter_name": "ip-adapter_sd15.safetensors"}}))
    assert "is not an IP-Adapter FaceID file" in message and "IPAdapter Encode Image" in message, message
    image_prompt = shrunk(api_workflow("01_image_prompt"))
    (plain_adapter,) = node_ids(image_prompt, "DecoupledIPAdapterLoader")
    message = prompt_error(sd15_server, with_inputs(image_prompt, {plain_adapter: {"ipadapter_name": "ip-adapter-faceid_sd15.bin"}}))
    assert "IPAdapter Encode Image: 'ip-adapter-faceid_sd15.bin'" in message and "Use IPAdapter Encode Face" in message, message
    message = prompt_error(sd15_server, with_inputs(faceid, {insightface: {"model_name": "antelopev2"}}))
    assert message.startswith(REJECTED) and "'antelopev2' is not there" in message and "buffalo_l.zip" in message, message
    broken = sd15_server.base / "models" / "insightface" / "models" / "broken"  # the server's own models folder
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "det_10g.onnx").write_bytes(b"truncated")
    (broken / "w600k_r50.onnx").write_bytes(b"truncated")
    message = prompt_error(sd15_server, with_inputs(faceid, {insightface: {"model_name": "broken"}}))
    assert "Load InsightFace: The InsightFace pack 'broken'" in message and "download" in message, message
    validate_and_run(sd15_server, "18_faceid")


@pytest.mark.server
def test_training_refuses_bad_input_with_what_to_fix_and_the_server_goes_on(sd15_server):
    """A picture without its caption, an adapter of another family to fine-tune, and an output name outside
    models/ipadapter (refused when queued); then the server runs a workflow."""
    uncaptioned = {name: data for name, data in input_files().items() if name.endswith("picture_0.png")}
    for name, data in uncaptioned.items():
        upload_image(sd15_server, data, "uncaptioned/" + name.rpartition("/")[2])
    prompt = on_standins(shrunk(api_workflow(TRAINING_WORKFLOW)))
    (dataset,) = node_ids(prompt, "LoadImageTextDataSetFromFolder")
    (train,) = node_ids(prompt, "DecoupledIPAdapterTrain")
    (loader,) = [key for key in node_ids(prompt, "DecoupledIPAdapterLoader") if key == prompt[train]["inputs"]["ipadapter"][0]]
    cases = (
        ({dataset: {"folder": "uncaptioned"}}, "picture 1 of 1 has no caption"),
        ({loader: {"ipadapter_name": "flux-ip-adapter.safetensors"}}, "training works on SD1.5 and SDXL adapters"),
        ({train: {"filename": "../escape"}}, "'../escape.safetensors' does not name a file inside"),
    )
    for changes, expected in cases:
        message = prompt_error(sd15_server, with_inputs(prompt, changes))
        assert "Train IPAdapter" in message and expected in message, message
    assert not (sd15_server.base / "models" / "escape.safetensors").exists()
    latent = saved_latent(sd15_server, latent_prompt("01_image_prompt", weight=0.7, seed=44))
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()
