"""tools/convert_workflow.py: ComfyUI_IPAdapter_plus workflows ("the port's") converted to this pack's nodes.

Unit tier (no ComfyUI): small graphs built here for each rule, in both formats; the command line (exit codes, the
input never changed); the table of this pack's nodes against the pinned schema; and the port's own example
workflows and public ones from ../shared/data/ipadapter-plus-workflows (skipped when that folder is absent), each
either converted into a well-formed graph that converts to itself again, or refused with a reason.
"""

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import port_workflow_files
from port_workflows import vocabulary
from port_workflows.rules import RULES, NotConvertible, replacements
from port_workflows.formats import LINK_FIELDS, convert, port_node_types, read_api, read_editor

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "node_schema.json"
SHARED = REPO.parent / "shared" / "data" / "ipadapter-plus-workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def golden_nodes() -> dict:
    return {node["node_id"]: node for node in json.loads(GOLDEN.read_text())}


# --- the table of this pack's nodes ---------------------------------------------------------------------------


@pytest.mark.parametrize("node_type", sorted(vocabulary.OUR_NODES))
def test_our_node_table_is_the_pinned_schema(node_type):
    """A renamed, reordered or retyped input or output of our nodes would make converted graphs invalid."""
    schema = golden_nodes().get(node_type)
    if schema is None:
        pytest.skip(f"{node_type} is not in the pinned schema yet (made by a branch not yet merged)")
    shape = vocabulary.OUR_NODES[node_type]
    inputs = [entry for entry in schema["inputs"] if entry["section"] != "hidden"]
    sockets = [(entry["name"], entry["type"]) for entry in inputs if entry["type"] not in WIDGET_TYPES]
    widgets = [entry for entry in inputs if entry["type"] in WIDGET_TYPES]
    assert list(shape.sockets) == sockets
    assert list(shape.widget_names()) == [entry["name"] for entry in widgets]
    for (name, default), entry in zip(shape.widgets, widgets):
        if default is not None:  # the loaders' file and preset widgets are always set by the rules
            assert default == entry.get("default", entry.get("options", [None])[0]), name
    assert list(shape.outputs) == [(output["name"], output["type"]) for output in schema["outputs"]]
    assert list(shape.controlled) == [entry["name"] for entry in widgets if entry.get("control_after_generate")]


def test_presets_and_weight_types_exist_here():
    schema = golden_nodes()
    presets = next(e for e in schema[vocabulary.UNIFIED_LOADER]["inputs"] if e["name"] == "preset")["options"]
    assert {name for table in vocabulary.UNIFIED_PRESETS.values() for name in table.values()} <= set(presets)
    weight_types = next(e for e in schema[vocabulary.APPLY_ADVANCED]["inputs"] if e["name"] == "weight_type")
    assert set(vocabulary.SIMPLE_WEIGHT_TYPES.values()) <= set(weight_types["options"])
    methods = next(e for e in schema[vocabulary.COMBINE]["inputs"] if e["name"] == "method")["options"]
    assert set(vocabulary.COMBINE_METHODS) <= set(methods)
    faceid_presets = next(e for e in schema[vocabulary.UNIFIED_LOADER_FACEID]["inputs"] if e["name"] == "preset")
    assert {ours for ours, _ in vocabulary.FACEID_PRESETS.values()} <= set(faceid_presets["options"])


def test_every_node_of_the_port_is_mapped_or_refused_with_a_reason():
    """The port's NODE_CLASS_MAPPINGS at its last release (9d076a3) has 37 nodes; each has a rule or a reason."""
    assert set(RULES) <= set(vocabulary.PORT_NODES) and not set(RULES) & set(vocabulary.PORT_NODES_NOT_YET)
    assert len(set(RULES) | set(vocabulary.PORT_NODES_NOT_YET)) == 37
    assert all(vocabulary.PORT_NODES_NOT_YET.values())


def test_community_presets_exist_here():
    presets = next(e for e in golden_nodes()[vocabulary.UNIFIED_LOADER]["inputs"] if e["name"] == "preset")["options"]
    if not any("(community)" in preset for preset in presets):
        pytest.skip("the community presets are not in the pinned schema yet (made by a branch not yet merged)")
    assert set(vocabulary.COMMUNITY_PRESETS.values()) <= set(presets)


# --- small graphs, editor format ----------------------------------------------------------------------------------


class EditorGraph:
    """Builds an editor-format workflow the way the front-end saves it."""

    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, node_type, widgets=(), *, inputs=(), outputs=(), **extra):
        node = {"id": len(self.nodes) + 1, "type": node_type, "pos": [100 * len(self.nodes), 50], "size": [300, 100],
                "flags": {}, "order": len(self.nodes), "mode": 0,
                "inputs": [{"name": name, "type": kind, "link": None} for name, kind in inputs],
                "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i} for i, (name, kind) in
                            enumerate(outputs)],
                "properties": {"Node name for S&R": node_type}, "widgets_values": list(widgets), **extra}  # fmt: skip
        self.nodes.append(node)
        return node

    def link(self, origin, slot, target, input_name):
        index = next(i for i, entry in enumerate(target["inputs"]) if entry["name"] == input_name)
        link_id = len(self.links) + 1
        kind = origin["outputs"][slot]["type"]
        self.links.append([link_id, origin["id"], slot, target["id"], index, kind])
        origin["outputs"][slot]["links"].append(link_id)
        target["inputs"][index]["link"] = link_id

    def workflow(self):
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [{"title": "g", "bounding": [0, 0, 10, 10]}], "config": {},
                "extra": {}, "version": 0.4}  # fmt: skip


def port_shape_inputs(node_type):
    return vocabulary.PORT_NODES[node_type].sockets


def simple_graph(checkpoint="sd15/realisticVision.safetensors", *, weight_type="standard", prep=None):
    """Checkpoint -> the port's Unified Loader (PLUS) -> IPAdapter (weight 0.8) -> KSampler; LoadImage as the
    reference, through PrepImageForClipVision when `prep` gives its widgets."""
    graph = EditorGraph()
    ckpt = graph.add("CheckpointLoaderSimple", [checkpoint], outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    loader = graph.add("IPAdapterUnifiedLoader", ["PLUS (high strength)"], inputs=port_shape_inputs("IPAdapterUnifiedLoader"),
                       outputs=vocabulary.PORT_NODES["IPAdapterUnifiedLoader"].outputs)  # fmt: skip
    image = graph.add("LoadImage", ["ref.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])
    apply = graph.add("IPAdapter", [0.8, 0.1, 0.9, weight_type], inputs=port_shape_inputs("IPAdapter"),
                      outputs=[("MODEL", "MODEL")], title="my image prompt")  # fmt: skip
    sampler = graph.add("KSampler", [1, "fixed", 20, 7, "euler", "normal", 1],
                        inputs=[("model", "MODEL"), ("positive", "CONDITIONING")], outputs=[("LATENT", "LATENT")])  # fmt: skip
    graph.link(ckpt, 0, loader, "model")
    graph.link(loader, 0, apply, "model")
    graph.link(loader, 1, apply, "ipadapter")
    if prep is None:
        graph.link(image, 0, apply, "image")
    else:
        prep_node = graph.add("PrepImageForClipVision", prep, inputs=[("image", "IMAGE")], outputs=[("IMAGE", "IMAGE")])
        graph.link(image, 0, prep_node, "image")
        graph.link(prep_node, 0, apply, "image")
    graph.link(apply, 0, sampler, "model")
    return graph.workflow()


def nodes_of(workflow, node_type):
    return [node for node in workflow["nodes"] if node["type"] == node_type]


def links_by_id(workflow):
    return {link[0]: dict(zip(LINK_FIELDS, link)) for link in workflow["links"]}


def input_origin(workflow, node, name):
    """(origin node type, origin slot) of `node`'s input `name`, or None."""
    link_id = next(entry["link"] for entry in node["inputs"] if entry["name"] == name)
    if link_id is None:
        return None
    link = links_by_id(workflow)[link_id]
    origin = next(n for n in workflow["nodes"] if n["id"] == link["origin_id"])
    return origin["type"], link["origin_slot"]


def test_simple_node_becomes_encode_and_apply_with_the_model_passed_through():
    workflow = simple_graph()
    before = copy.deepcopy(workflow)
    out, report = convert(workflow)
    assert workflow == before  # the input is not changed
    check_editor_graph(before, out)
    (apply,) = nodes_of(out, vocabulary.APPLY)
    (encode,) = nodes_of(out, vocabulary.ENCODE)
    (loader,) = nodes_of(out, vocabulary.UNIFIED_LOADER)
    assert apply["id"] == 4 and apply["title"] == "my image prompt" and apply["pos"] == [300, 50]
    assert apply["widgets_values"] == [0.8, 0.1, 0.9, 1.0, 1.0, False]
    # The port's loader passed the model through: Apply now reads the checkpoint's model.
    assert input_origin(out, apply, "model") == ("CheckpointLoaderSimple", 0)
    assert input_origin(out, apply, "ipadapter") == (vocabulary.UNIFIED_LOADER, 0)
    assert input_origin(out, apply, "embeds") == (vocabulary.ENCODE, 0)
    assert input_origin(out, encode, "clip_vision") == (vocabulary.UNIFIED_LOADER, 1)
    assert input_origin(out, encode, "image") == ("LoadImage", 0)
    (sampler,) = nodes_of(out, "KSampler")
    assert input_origin(out, sampler, "model") == (vocabulary.APPLY, 0)
    assert loader["widgets_values"] == ["SD1.5 plus"]
    assert any("middle block" in line for line in report)
    assert convert(out) == (out, [])  # a converted graph converts to itself


@pytest.mark.parametrize(("checkpoint", "preset"), [("sd_xl_base_1.0.safetensors", "SDXL plus ViT-H"),
                                                    ("v1-5-pruned-emaonly.safetensors", "SD1.5 plus")])  # fmt: skip
def test_unified_loader_preset_follows_the_checkpoint_and_says_so(checkpoint, preset):
    out, report = convert(simple_graph(checkpoint))
    assert nodes_of(out, vocabulary.UNIFIED_LOADER)[0]["widgets_values"] == [preset]
    assert any(checkpoint in line and preset in line for line in report)


@pytest.mark.parametrize(("weight_type", "ours"), [("prompt is more important", "ease out"),
                                                   ("style transfer", "style transfer")])  # fmt: skip
def test_simple_node_weight_types_become_apply_advanced(weight_type, ours):
    out, _ = convert(simple_graph(weight_type=weight_type))
    assert not nodes_of(out, vocabulary.APPLY)
    (apply,) = nodes_of(out, vocabulary.APPLY_ADVANCED)
    assert apply["widgets_values"] == [0.8, 0.1, 0.9, ours, "V only", "", 1.0, 1.0, 1.0, False]


@pytest.mark.parametrize("crop", ["top", "pad"])
def test_prep_image_becomes_our_prep_image_between_the_same_nodes(crop):
    out, _ = convert(simple_graph(prep=["BICUBIC", crop, 0.15]))
    (prep,) = nodes_of(out, vocabulary.PREP_IMAGE)
    assert prep["widgets_values"] == ["BICUBIC", crop, 0.15, 224]
    assert input_origin(out, prep, "image") == ("LoadImage", 0)
    (encode,) = nodes_of(out, vocabulary.ENCODE)
    assert input_origin(out, encode, "image") == (vocabulary.PREP_IMAGE, 0)


def test_a_linked_widget_stays_linked():
    workflow = simple_graph()
    graph_nodes = workflow["nodes"]
    primitive = {"id": 6, "type": "PrimitiveNode", "pos": [0, 400], "size": [200, 80], "flags": {}, "order": 5,
                 "mode": 0, "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [7], "widget": {"name": "weight"}}],
                 "properties": {}, "widgets_values": [0.65, "fixed"]}  # fmt: skip
    apply = graph_nodes[3]
    apply["inputs"].append({"name": "weight", "type": "FLOAT", "link": 7, "widget": {"name": "weight"}})
    workflow["links"].append([7, 6, 0, 4, len(apply["inputs"]) - 1, "FLOAT"])
    workflow["nodes"].append(primitive)
    workflow["last_node_id"], workflow["last_link_id"] = 6, 7
    out, _ = convert(workflow)
    check_editor_graph(workflow, out)
    (apply,) = nodes_of(out, vocabulary.APPLY)
    assert input_origin(out, apply, "weight") == ("PrimitiveNode", 0)
    assert next(e for e in apply["inputs"] if e["name"] == "weight")["widget"] == {"name": "weight"}


def test_bypassed_port_node_gives_bypassed_nodes():
    workflow = simple_graph()
    workflow["nodes"][3]["mode"] = 4
    out, _ = convert(workflow)
    assert {node["mode"] for node in out["nodes"] if node["type"] in (vocabulary.APPLY, vocabulary.ENCODE)} == {4}


def test_refusal_names_every_node_type_it_cannot_map():
    workflow = simple_graph()
    workflow["nodes"].append({"id": 9, "type": "IPAdapterTiledBatch", "pos": [0, 0], "size": [1, 1], "flags": {},
                              "order": 9, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                              "widgets_values": []})  # fmt: skip
    workflow["nodes"].append({"id": 10, "type": "IPAdapterFaceIDKolors", "pos": [0, 0], "size": [1, 1],
                              "flags": {}, "order": 10, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                              "widgets_values": []})  # fmt: skip
    with pytest.raises(NotConvertible) as refused:
        convert(workflow)
    assert "IPAdapterTiledBatch (its tile t of picture i" in str(refused.value)
    assert "IPAdapterFaceIDKolors (Kolors" in str(refused.value)
    assert str(refused.value).count(" | ") == 1  # the IPAdapter and loader nodes it can map are not named


def test_advanced_with_a_batch_and_average_is_refused_but_a_single_loaded_image_converts():
    workflow = simple_graph()
    apply = workflow["nodes"][3]
    apply["type"] = "IPAdapterAdvanced"
    apply["inputs"] = [{"name": name, "type": kind, "link": None} for name, kind in port_shape_inputs("IPAdapterAdvanced")]
    apply["inputs"][0]["link"], apply["inputs"][1]["link"], apply["inputs"][2]["link"] = 2, 3, 4
    apply["widgets_values"] = [0.7, "ease in", "average", 0.0, 1.0, "K+V"]
    out, _ = convert(workflow)  # the reference is one LoadImage: averaging one image changes nothing
    (advanced,) = nodes_of(out, vocabulary.APPLY_ADVANCED)
    assert advanced["widgets_values"] == [0.7, 0.0, 1.0, "ease in", "K+V", "", 1.0, 1.0, 1.0, False]
    batch = {"id": 9, "type": "ImageBatch", "pos": [0, 0], "size": [1, 1], "flags": {}, "order": 9, "mode": 0,
             "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4]}], "properties": {},
             "widgets_values": []}  # fmt: skip
    workflow["nodes"].append(batch)
    workflow["links"] = [link if link[0] != 4 else [4, 9, 0, 4, 2, "IMAGE"] for link in workflow["links"]]
    with pytest.raises(NotConvertible, match="combine_embeds 'average' over a batch"):
        convert(workflow)


# --- small graphs, API format ------------------------------------------------------------------------------------


def api_graph():
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaperXL.safetensors"}},
        "2": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "ip-adapter_sdxl_vit-h.safetensors"}},
        "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-h.safetensors"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
        "5": {"class_type": "IPAdapterEncoder", "inputs": {"ipadapter": ["2", 0], "image": ["4", 0], "weight": 1.0,
                                                           "clip_vision": ["3", 0]}},  # fmt: skip
        "6": {"class_type": "IPAdapterEmbeds", "inputs": {"model": ["1", 0], "ipadapter": ["2", 0],
                                                          "pos_embed": ["5", 0], "neg_embed": ["5", 1], "weight": 0.9,
                                                          "weight_type": "style transfer", "start_at": 0.0,
                                                          "end_at": 0.8, "embeds_scaling": "K+V"}},  # fmt: skip
        "7": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "seed": 1}},
    }


def test_api_format_gives_api_format():
    workflow = api_graph()
    out, _ = convert(workflow)
    assert out["2"] == {"class_type": vocabulary.LOADER, "inputs": {"ipadapter_name": "ip-adapter_sdxl_vit-h.safetensors"}}
    assert out["5"]["class_type"] == vocabulary.ENCODE
    assert out["5"]["inputs"] == {"crop": "center", "weight": 1.0, "enhance_tiles": 1, "enhance_ratio": 1.0,
                                  "ipadapter": ["2", 0], "clip_vision": ["3", 0], "image": ["4", 0]}  # fmt: skip
    assert out["6"]["class_type"] == vocabulary.APPLY_ADVANCED
    assert out["6"]["inputs"] == {"weight": 0.9, "start_at": 0.0, "end_at": 0.8, "weight_type": "style transfer",
                                  "embeds_scaling": "K+V", "block_weights": "", "composition_weight": 1.0,
                                  "faceid_v2_weight": 1.0, "lora_strength": 1.0, "unfold_batch": False, "model": ["1", 0],
                                  "ipadapter": ["2", 0], "embeds": ["5", 0]}  # fmt: skip
    assert out["7"] == workflow["7"] and out["1"] == workflow["1"]
    check_api_graph(out)
    assert convert(out) == (out, [])


def test_api_encoder_weight_is_encode_weight():
    workflow = api_graph()
    workflow["5"]["inputs"]["weight"] = 1.5
    out, _ = convert(workflow)
    assert out["5"]["inputs"]["weight"] == 1.5
    workflow["5"]["inputs"]["mask"] = ["4", 1]
    with pytest.raises(NotConvertible, match="IPAdapterEncoder .*mask"):
        convert(workflow)


def test_api_negative_from_another_encoder_converts_only_when_it_is_the_same_blank_encoding():
    workflow = api_graph()
    workflow["8"] = copy.deepcopy(workflow["5"])
    workflow["8"]["inputs"]["image"] = ["9", 0]
    workflow["9"] = {"class_type": "LoadImage", "inputs": {"image": "other.png"}}
    workflow["6"]["inputs"]["neg_embed"] = ["8", 1]
    out, report = convert(workflow)  # the same adapter and encoder: the same blank picture's encoding
    assert out["6"]["inputs"]["embeds"] == ["5", 0]
    assert any("neg_embed (#8) is the blank picture's encoding" in line for line in report)
    workflow["10"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-g.safetensors"}}
    workflow["8"]["inputs"]["clip_vision"] = ["10", 0]
    with pytest.raises(NotConvertible, match="neg_embed comes from another node"):
        convert(workflow)


def test_noise_becomes_our_noise_with_a_fixed_seed_in_both_formats():
    workflow = simple_graph()
    noise = {"id": 6, "type": "IPAdapterNoise", "pos": [0, 500], "size": [300, 100], "flags": {}, "order": 5,
             "mode": 0, "inputs": [{"name": "image_optional", "type": "IMAGE", "link": 7}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [8]}], "properties": {},
             "widgets_values": ["dissolve", 0.55, 3]}  # fmt: skip
    preview = {"id": 7, "type": "PreviewImage", "pos": [0, 700], "size": [300, 100], "flags": {}, "order": 6,
               "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 8}], "properties": {}}  # fmt: skip
    workflow["nodes"] += [noise, preview]
    workflow["links"] += [[7, 3, 0, 6, 0, "IMAGE"], [8, 6, 0, 7, 0, "IMAGE"]]
    workflow["last_node_id"], workflow["last_link_id"] = 7, 8
    out, report = convert(workflow)
    check_editor_graph(workflow, out)
    (ours,) = nodes_of(out, vocabulary.NOISE)
    assert ours["widgets_values"] == ["dissolve", 0.55, 3, 0, "fixed"]
    assert input_origin(out, ours, "image") == ("LoadImage", 0)
    (preview,) = nodes_of(out, "PreviewImage")
    assert input_origin(out, preview, "images") == (vocabulary.NOISE, 0)
    assert any("seed" in line for line in report)
    api = {"1": {"class_type": "IPAdapterNoise", "inputs": {"type": "shuffle", "strength": 0.4, "blur": 0}},
           "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}  # fmt: skip
    out, _ = convert(api)
    assert out["1"] == {"class_type": vocabulary.NOISE, "inputs": {"type": "shuffle", "strength": 0.4, "blur": 0, "seed": 0}}


def test_kolors_adapter_file_is_refused():
    workflow = api_graph()
    workflow["2"]["inputs"]["ipadapter_file"] = "Kolors-IP-Adapter-Plus.bin"
    with pytest.raises(NotConvertible, match="Kolors"):
        convert(workflow)


# --- the command line ------------------------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "convert_workflow.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip


def test_cli_writes_the_conversion_and_never_changes_the_input(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(simple_graph()))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    result = run_cli(source, "-o", tmp_path / "out.json")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
    assert json.loads((tmp_path / "out.json").read_text()) == convert(simple_graph())[0]
    assert "IPAdapter, IPAdapterUnifiedLoader" in result.stdout and "check:" in result.stdout


def test_cli_exit_2_with_one_line_and_no_output_when_a_node_cannot_be_mapped(tmp_path):
    source = tmp_path / "in.json"
    workflow = simple_graph()
    workflow["nodes"][3]["widgets_values"][3] = "strong style"  # not one of the port's three
    source.write_text(json.dumps(workflow))
    result = run_cli(source, "-o", tmp_path / "out.json")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "IPAdapter (#4: weight_type 'strong style'" in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_cli_refuses_to_overwrite_its_input(tmp_path):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(simple_graph()))
    result = run_cli(source, "-o", source)
    assert result.returncode != 0 and "never changed" in result.stderr


# --- the port's example workflows and public ones ------------------------------------------------------------


def shared_files():
    if not SHARED.is_dir():
        return []
    return sorted(SHARED.glob("examples/*.json")) + sorted(SHARED.glob("wild/*.json"))


def editor_widgets(node: dict) -> dict:
    """Our node's widget values by name, from its editor-format widgets_values."""
    shape = vocabulary.OUR_NODES[node["type"]]
    values = iter(node["widgets_values"])
    named = {}
    for name, _ in shape.widgets:
        named[name] = next(values)
        if name in shape.controlled:
            assert next(values) in ("fixed", "increment", "decrement", "randomize")
    return named


def pinned_inputs(schema: dict, node_type: str) -> list:
    """The pinned schema's inputs of our node; none for a node of a branch not merged yet (its widgets are checked
    against OUR_NODES only)."""
    return schema[node_type]["inputs"] if node_type in schema else []


def bypassed_loras(workflow: dict) -> set[str]:
    """The ids of the core LoRA loaders of a FaceID LoRA that the conversion leaves out."""
    done, _ = replacements((read_editor if "nodes" in workflow else read_api)(workflow))
    return {lora_id for replacement in done.values() for lora_id in replacement.left_out}


def check_editor_graph(source: dict, out: dict) -> None:
    """The converted editor graph is well formed: links agree with both ends, our nodes have their widgets and
    their required sockets, no port node is left, other nodes are unchanged."""
    schema = golden_nodes()
    by_id = {node["id"]: node for node in out["nodes"]}
    assert len(by_id) == len(out["nodes"])
    links = links_by_id(out)
    for link in links.values():
        origin, target = by_id[link["origin_id"]], by_id[link["target_id"]]
        assert link["id"] in origin["outputs"][link["origin_slot"]]["links"]
        assert target["inputs"][link["target_slot"]]["link"] == link["id"]
        if vocabulary.OUR_NODES.keys() & {origin["type"], target["type"]}:  # others keep their saved types
            assert origin["outputs"][link["origin_slot"]]["type"] == link["type"]
    for node in out["nodes"]:
        for output in node.get("outputs") or []:
            for link_id in output.get("links") or []:
                assert links[link_id]["origin_id"] == node["id"]
        for entry in node.get("inputs") or []:
            if entry.get("link") is not None:
                assert links[entry["link"]]["target_id"] == node["id"]
    assert not port_node_types(out)
    source_types = {node["type"] for node in source["nodes"]}
    for node in out["nodes"]:
        assert node["type"] in source_types or node["type"] in vocabulary.OUR_NODES
        if node["type"] in vocabulary.OUR_NODES:
            shape = vocabulary.OUR_NODES[node["type"]]
            assert len(node["widgets_values"]) == len(shape.widgets) + len(shape.controlled)
            for entry in pinned_inputs(schema, node["type"]):
                if entry["section"] == "required" and entry["type"] not in WIDGET_TYPES:
                    assert input_origin(out, node, entry["name"]) is not None, (node["id"], entry["name"])
                if entry["type"] == "COMBO" and isinstance(entry["options"], list):  # not a listing of files
                    value = editor_widgets(node)[entry["name"]]
                    assert value in entry["options"], (node["type"], entry["name"], value)
    left_out = {int(node_id) for node_id in bypassed_loras(source)}
    kept = {node["id"]: node for node in source["nodes"]
            if node["type"] not in port_node_types(source) and node["id"] not in left_out}  # fmt: skip
    for node_id, node in kept.items():
        assert by_id[node_id]["pos"] == node["pos"] and by_id[node_id].get("widgets_values") == node.get("widgets_values")
    assert out["last_node_id"] >= max(by_id) and out["last_link_id"] >= max(links, default=0)
    assert out.get("groups") == source.get("groups")


def check_api_graph(out: dict) -> None:
    schema = golden_nodes()
    assert not port_node_types(out)
    for node in out.values():
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                assert str(value[0]) in out
        if node["class_type"] in vocabulary.OUR_NODES:
            for entry in pinned_inputs(schema, node["class_type"]):
                if entry["section"] == "required":
                    assert entry["name"] in node["inputs"], (node["class_type"], entry["name"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/ipadapter-plus-workflows is absent (a user's clone)")
@pytest.mark.parametrize("path", shared_files(), ids=lambda path: path.name[:60])
def test_shared_workflow_converts_well_formed_or_is_refused_as_listed(path):
    """Each file converts into a well-formed graph that converts to itself, or is refused naming the node types that
    tests/port_workflow_files.py lists for it (the list the browser test reads too)."""
    workflow = json.loads(path.read_text())
    found = port_node_types(workflow)
    assert found, "every file of the set uses the port's nodes"
    name = f"{path.parent.name}/{path.name}"
    if name in port_workflow_files.REFUSED:
        with pytest.raises(NotConvertible) as refused:
            convert(workflow)
        named = set()
        for part in str(refused.value).split(" | "):
            node_type, _, why = part.partition(" (")
            assert node_type in found and why, part
            named.add(node_type)
        assert named == port_workflow_files.REFUSED[name]
        return
    out, report = convert(workflow)
    if "nodes" in workflow:
        check_editor_graph(workflow, out)
    else:
        check_api_graph(out)
    assert report and convert(out) == (out, [])


def test_the_list_of_shared_files_names_only_files_of_the_set():
    if not SHARED.is_dir():
        pytest.skip("../shared/data/ipadapter-plus-workflows is absent (a user's clone)")
    names = {f"{path.parent.name}/{path.name}" for path in shared_files()}
    assert set(port_workflow_files.REFUSED) | set(port_workflow_files.NOT_RUN) <= names
    assert not set(port_workflow_files.REFUSED) & set(port_workflow_files.NOT_RUN)


@pytest.mark.parametrize(("method", "inputs", "differs"), [("subtract", 3, "took their mean"), ("subtract", 2, None),
                                                           ("norm average", 2, "norm across the inputs"),
                                                           ("average", 3, None)])  # fmt: skip
def test_combine_says_where_the_port_computed_otherwise(method, inputs, differs):
    workflow = api_graph()
    for index in range(8, 8 + inputs - 1):
        workflow[str(index)] = copy.deepcopy(workflow["5"])
    workflow["20"] = {"class_type": "IPAdapterCombineEmbeds",
                      "inputs": {"method": method, **{f"embed{n + 1}": [str(node), 0] for n, node in
                                                      enumerate([5, *range(8, 8 + inputs - 1)])}}}  # fmt: skip
    workflow["6"]["inputs"]["pos_embed"] = ["20", 0]
    del workflow["6"]["inputs"]["neg_embed"]
    out, report = convert(workflow)
    assert out["20"]["class_type"] == vocabulary.COMBINE and out["20"]["inputs"]["method"] == method
    assert out["20"]["inputs"]["embeds_3" if inputs == 3 else "embeds_2"] == [str(8 + inputs - 2), 0]
    assert out["6"]["inputs"]["embeds"] == ["20", 0]
    check_api_graph(out)
    assert any(differs in line for line in report) if differs else not any("the port took" in line or
                                                                           "the port divided" in line for line in report)  # fmt: skip


# --- FaceID -----------------------------------------------------------------------------------------------------


def faceid_graph(*, face_image_to=None):
    """Checkpoint -> the port's FaceID Unified Loader (Plus V2, LoRA 0.6, CUDA) -> IPAdapter FaceID -> KSampler."""
    graph = EditorGraph()
    ckpt = graph.add("CheckpointLoaderSimple", ["v1-5-pruned-emaonly.safetensors"],
                     outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])  # fmt: skip
    loader = graph.add("IPAdapterUnifiedLoaderFaceID", ["FACEID PLUS V2", 0.6, "CUDA"],
                       inputs=port_shape_inputs("IPAdapterUnifiedLoaderFaceID"),
                       outputs=vocabulary.PORT_NODES["IPAdapterUnifiedLoaderFaceID"].outputs)  # fmt: skip
    image = graph.add("LoadImage", ["face.png", "image"], outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")])
    faceid = graph.add("IPAdapterFaceID", [0.8, 2.0, "linear", "concat", 0.0, 1.0], inputs=port_shape_inputs("IPAdapterFaceID"),
                       outputs=vocabulary.PORT_NODES["IPAdapterFaceID"].outputs)  # fmt: skip
    sampler = graph.add("KSampler", [1, "fixed", 20, 7, "euler", "normal", 1],
                        inputs=[("model", "MODEL"), ("positive", "CONDITIONING")], outputs=[("LATENT", "LATENT")])  # fmt: skip
    graph.link(ckpt, 0, loader, "model")
    graph.link(loader, 0, faceid, "model")
    graph.link(loader, 1, faceid, "ipadapter")
    graph.link(image, 0, faceid, "image")
    graph.link(faceid, 0, sampler, "model")
    if face_image_to is not None:
        preview = graph.add(face_image_to, [], inputs=[("images", "IMAGE")])
        graph.link(faceid, 1, preview, "images")
    return graph.workflow()


def test_faceid_becomes_encode_face_and_apply_advanced_with_the_loaders_lora_strength():
    workflow = faceid_graph()
    out, report = convert(workflow)
    check_editor_graph(workflow, out)
    (loader,) = nodes_of(out, vocabulary.UNIFIED_LOADER_FACEID)
    assert loader["widgets_values"] == ["FaceID Plus V2", "SD1.5", "CUDA"]
    (encode,) = nodes_of(out, vocabulary.ENCODE_FACE)
    assert input_origin(out, encode, "ipadapter") == (vocabulary.UNIFIED_LOADER_FACEID, 0)
    assert input_origin(out, encode, "clip_vision") == (vocabulary.UNIFIED_LOADER_FACEID, 1)
    assert input_origin(out, encode, "insightface") == (vocabulary.UNIFIED_LOADER_FACEID, 2)
    assert input_origin(out, encode, "image") == ("LoadImage", 0)
    (apply,) = nodes_of(out, vocabulary.APPLY_ADVANCED)
    # weight, start, end, type, scaling (an old save: V only), block weights, c, weight_faceidv2, the loader's LoRA
    assert apply["widgets_values"] == [0.8, 0.0, 1.0, "linear", "V only", "", 1.0, 2.0, 0.6, False]
    assert input_origin(out, apply, "model") == ("CheckpointLoaderSimple", 0)
    assert input_origin(out, apply, "embeds") == (vocabulary.ENCODE_FACE, 0)
    assert any("FaceID LoRA on the model at 0.6" in line for line in report)
    assert any("provider 'CUDA'" in line for line in report)
    assert convert(out) == (out, [])


def test_faceid_face_image_output_is_encode_faces():
    workflow = faceid_graph(face_image_to="PreviewImage")
    out, _ = convert(workflow)
    check_editor_graph(workflow, out)
    (preview,) = nodes_of(out, "PreviewImage")
    assert input_origin(out, preview, "images") == (vocabulary.ENCODE_FACE, 1)
    assert convert(out) == (out, [])


def test_faceid_preset_without_a_file_for_the_base_is_refused():
    workflow = faceid_graph()
    workflow["nodes"][0]["widgets_values"] = ["sd_xl_base_1.0.safetensors"]
    workflow["nodes"][1]["widgets_values"][0] = "FACEID PLUS - SD1.5 only"
    with pytest.raises(NotConvertible, match="'FACEID PLUS - SD1.5 only' has no SDXL file"):
        convert(workflow)


def faceid_api_graph(lora_loader="LoraLoaderModelOnly", lora_file="ip-adapter-faceid-plusv2_sd15_lora.safetensors"):
    """Checkpoint -> a core LoRA loader of `lora_file` (0.7) -> IPAdapter FaceID (Model Loader, InsightFace Loader,
    CLIP vision loader) -> KSampler; a text encoder reads the LoRA loader's CLIP when it has one."""
    lora_inputs = {"lora_name": lora_file, "strength_model": 0.7, "model": ["1", 0]}
    if lora_loader == "LoraLoader":
        lora_inputs.update(strength_clip=0.5, clip=["1", 1])
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "2": {"class_type": lora_loader, "inputs": lora_inputs},
        "3": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": "ip-adapter-faceid-plusv2_sd15.bin"}},
        "4": {"class_type": "IPAdapterInsightFaceLoader", "inputs": {"provider": "CPU", "model_name": "antelopev2"}},
        "5": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit-h.safetensors"}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "7": {"class_type": "IPAdapterFaceID", "inputs": {
            "model": ["2", 0], "ipadapter": ["3", 0], "image": ["6", 0], "clip_vision": ["5", 0], "insightface": ["4", 0],
            "weight": 0.9, "weight_faceidv2": 1.5, "weight_type": "ease in", "combine_embeds": "concat", "start_at": 0.0,
            "end_at": 1.0, "embeds_scaling": "K+V"}},  # fmt: skip
        "8": {"class_type": "KSampler", "inputs": {"model": ["7", 0]}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"text": "a face", "clip": ["2", 1] if lora_loader == "LoraLoader"
                                                         else ["1", 1]}},  # fmt: skip
    }


@pytest.mark.parametrize("lora_loader", ["LoraLoaderModelOnly", "LoraLoader"])
def test_faceid_lora_loader_is_left_out_and_its_strength_is_applys_lora_strength(lora_loader):
    out, report = convert(faceid_api_graph(lora_loader))
    check_api_graph(out)
    assert "2" not in out
    apply = out["7"]
    assert apply["class_type"] == vocabulary.APPLY_ADVANCED
    assert apply["inputs"]["model"] == ["1", 0]  # the LoRA loader's own model
    assert apply["inputs"]["lora_strength"] == 0.7 and apply["inputs"]["faceid_v2_weight"] == 1.5
    assert out["9"]["inputs"]["clip"] == ["1", 1]  # its CLIP consumers read its CLIP input's source
    encode = next(node for node in out.values() if node["class_type"] == vocabulary.ENCODE_FACE)
    assert encode["inputs"]["insightface"] == ["4", 0] and encode["inputs"]["clip_vision"] == ["5", 0]
    assert out["4"] == {"class_type": vocabulary.INSIGHTFACE_LOADER, "inputs": {"model_name": "antelopev2", "provider": "CPU"}}
    assert any("#2 -> (left out)" == line for line in report)
    assert any("FaceID LoRA of #2 (strength 0.7) is Apply's lora_strength" in line for line in report)


def test_faceid_without_a_lora_has_lora_strength_0_and_another_lora_stays():
    workflow = faceid_api_graph(lora_file="add_detail.safetensors")
    out, report = convert(workflow)
    assert out["2"] == workflow["2"] and out["7"]["inputs"]["model"] == ["2", 0]
    assert out["7"]["inputs"]["lora_strength"] == 0
    assert any("no FaceID LoRA" in line for line in report)


def test_faceid_node_with_an_adapter_that_is_not_faceid_encodes_pictures():
    """The port's FaceID node with a non-FaceID file was its Advanced node (weight_faceidv2 unused)."""
    workflow = faceid_api_graph()
    workflow["3"]["inputs"]["ipadapter_file"] = "ip-adapter-full-face_sd15.safetensors"
    del workflow["7"]["inputs"]["insightface"]
    out, report = convert(workflow)
    assert not [node for node in out.values() if node["class_type"] == vocabulary.ENCODE_FACE]
    encode = next(node for node in out.values() if node["class_type"] == vocabulary.ENCODE)
    assert encode["inputs"]["image"] == ["6", 0]
    assert out["2"] == workflow["2"]  # no FaceID image prompt: the LoRA loader stays
    assert out["7"]["inputs"]["faceid_v2_weight"] == 1.0 and any("weight_faceidv2 is dropped" in line for line in report)


# --- style and composition, precise, Mad Scientist, Community ------------------------------------------------------


def image_prompt_api(node_type, checkpoint="sd_xl_base_1.0.safetensors", **widgets):
    """Checkpoint -> the port's Unified Loader (PLUS) -> `node_type` with a LoadImage ('image' and, for style and
    composition, two images) -> KSampler."""
    inputs = {"model": ["2", 0], "ipadapter": ["2", 1], **widgets}
    if node_type.startswith("IPAdapterStyleComposition"):
        inputs.update(image_style=["3", 0], image_composition=["4", 0])
    else:
        inputs["image"] = ["3", 0]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "IPAdapterUnifiedLoader", "inputs": {"model": ["1", 0], "preset": "PLUS (high strength)"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "style.png"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "composition.png"}},
        "5": {"class_type": node_type, "inputs": inputs},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0]}},
    }


def made(out, node_type):
    return [(node_id, node) for node_id, node in out.items() if node["class_type"] == node_type]


@pytest.mark.parametrize(("expand", "weight_type"), [(False, "style and composition"), (True, "strong style and composition")])
def test_style_composition_encodes_both_images_and_weights_them(expand, weight_type):
    out, _ = convert(image_prompt_api("IPAdapterStyleComposition", weight_style=1.2, weight_composition=0.7,
                                      expand_style=expand, combine_embeds="average", start_at=0.1, end_at=0.9,
                                      embeds_scaling="V only"))  # fmt: skip
    check_api_graph(out)
    apply = out["5"]["inputs"]
    assert out["5"]["class_type"] == vocabulary.APPLY_ADVANCED
    assert (apply["weight"], apply["composition_weight"], apply["weight_type"]) == (1.2, 0.7, weight_type)
    encodes = dict(made(out, vocabulary.ENCODE))
    assert encodes[apply["embeds"][0]]["inputs"]["image"] == ["3", 0]
    assert encodes[apply["composition_embeds"][0]]["inputs"]["image"] == ["4", 0]


@pytest.mark.parametrize(("node_type", "boost", "weight_type"), [
    ("IPAdapterPreciseStyleTransfer", "style_boost", "style transfer precise"),
    ("IPAdapterPreciseComposition", "composition_boost", "composition precise"),
])  # fmt: skip
def test_precise_types_boost_equal_to_the_weight_is_the_type_alone(node_type, boost, weight_type):
    widgets = {"weight": 0.8, boost: 0.8, "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
               "embeds_scaling": "K+V"}  # fmt: skip
    out, _ = convert(image_prompt_api(node_type, **widgets))
    assert out["5"]["inputs"]["weight_type"] == weight_type and out["5"]["inputs"]["block_weights"] == ""


@pytest.mark.parametrize(("node_type", "checkpoint", "block_weights"), [
    # SDXL composition precise, w 0.8, composition_boost 0.4: 3 reads w, 6 the boost, the rest 0.1 boost (not 4)
    ("IPAdapterPreciseComposition", "sd_xl_base_1.0.safetensors",
     "0:0.05, 1:0.05, 2:0.05, 3:1, 5:0.05, 6:0.5, 7:0.05, 8:0.05, 9:0.05, 10:0.05"),
    # SD1.5 style transfer precise, w 0.8, style_boost 0.4: 4 and 5 (the composition modules) read the boost
    ("IPAdapterPreciseStyleTransfer", "v1-5-pruned-emaonly.safetensors",
     "0:1, 1:1, 2:1, 3:1, 4:0.125, 5:0.5, 9:1, 10:1, 11:1, 12:1, 13:1, 14:1, 15:1"),
])  # fmt: skip
def test_precise_types_boost_other_than_the_weight_becomes_block_weights(node_type, checkpoint, block_weights):
    boost = "style_boost" if "Style" in node_type else "composition_boost"
    widgets = {"weight": 0.8, boost: 0.4, "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
               "embeds_scaling": "V only"}  # fmt: skip
    out, report = convert(image_prompt_api(node_type, checkpoint, **widgets))
    assert out["5"]["inputs"]["block_weights"] == block_weights
    assert any(f"{boost} 0.4" in line and "block_weights" in line for line in report)


@pytest.mark.parametrize(("weight_type", "ours"), [("style transfer", "linear"), ("composition precise", "composition precise")])
def test_mad_scientist_layer_weights_are_block_weights(weight_type, ours):
    widgets = {"weight": 0.9, "weight_faceidv2": 1.3, "weight_type": weight_type, "combine_embeds": "concat",
               "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only", "layer_weights": "3:0.8, 6:0.35"}  # fmt: skip
    out, report = convert(image_prompt_api("IPAdapterMS", **widgets))
    apply = out["5"]["inputs"]
    assert (apply["block_weights"], apply["weight_type"], apply["faceid_v2_weight"]) == ("3:0.8, 6:0.35", ours, 1.0)
    assert any("weight_faceidv2 is dropped" in line for line in report)


@pytest.mark.parametrize(("checkpoint", "preset"), [("sd_xl_base_1.0.safetensors", "SDXL composition (community)"),
                                                    ("v1-5-pruned-emaonly.safetensors", "SD1.5 composition (community)")])  # fmt: skip
def test_community_composition_preset_follows_the_checkpoint_and_kolors_is_refused(checkpoint, preset):
    workflow = image_prompt_api("IPAdapterAdvanced", checkpoint, weight=1.0, weight_type="linear",
                                combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only")  # fmt: skip
    workflow["2"] = {"class_type": "IPAdapterUnifiedLoaderCommunity", "inputs": {"model": ["1", 0], "preset": "Composition"}}
    out, _ = convert(workflow)
    assert out["2"] == {"class_type": vocabulary.UNIFIED_LOADER, "inputs": {"preset": preset}}
    workflow["2"]["inputs"]["preset"] = "Kolors"
    with pytest.raises(NotConvertible, match="IPAdapterUnifiedLoaderCommunity .*Kolors"):
        convert(workflow)


# --- Batch variants, weight strategies, enhancer, tiles, embeds files, regional bundles -------------------------


def test_batch_variant_unfolds_and_keeps_the_weights_link():
    workflow = image_prompt_api("IPAdapterBatch", weight=["7", 0], weight_type="linear", start_at=0.0, end_at=1.0,
                                embeds_scaling="V only", encode_batch_size=8)  # fmt: skip
    workflow["7"] = {"class_type": "IPAdapterWeights", "inputs": {
        "weights": "1.0, 0.0", "timing": "ease_in", "frames": 6, "start_frame": 0, "end_frame": 9999,
        "add_starting_frames": 2, "add_ending_frames": 0, "method": "alternate batches", "image": ["3", 0]}}  # fmt: skip
    out, report = convert(workflow)
    check_api_graph(out)
    apply = out["5"]["inputs"]
    assert apply["unfold_batch"] is True and apply["weight"] == ["7", 0]
    assert out["7"] == {"class_type": vocabulary.WEIGHTS, "inputs": {
        "weights": "1.0, 0.0", "timing": "ease_in", "frames": 6, "start_frame": 0, "end_frame": 9999,
        "add_starting_frames": 2, "add_ending_frames": 0, "method": "alternate batches", "seed": 0,
        "image": ["3", 0]}}  # fmt: skip
    assert any("encode_batch_size 8 is dropped" in line for line in report)
    assert not any("random" in line for line in report)  # its timing is not random


def test_weight_strategy_nodes_keep_their_inputs_and_outputs_in_the_editor():
    graph = EditorGraph()
    weights = graph.add("IPAdapterWeights", ["1.0, 0.5", "random", 4, 0, 9999, 0, 0, "full batch"],
                        inputs=[("image", "IMAGE")], outputs=vocabulary.PORT_NODES["IPAdapterWeights"].outputs)  # fmt: skip
    strategy = graph.add("IPAdapterPromptScheduleFromWeightsStrategy", ["a cat\na dog"],
                         inputs=[("weights_strategy", "WEIGHTS_STRATEGY")], outputs=[("prompt_schedule", "STRING")])  # fmt: skip
    combine = graph.add("IPAdapterCombineWeights", [0.0, 0.3], inputs=[("weights_1", "FLOAT")],
                        outputs=[("weights", "FLOAT"), ("count", "INT")])  # fmt: skip
    graph.link(weights, 5, strategy, "weights_strategy")
    graph.link(weights, 1, combine, "weights_1")
    workflow = graph.workflow()
    out, report = convert(workflow)
    check_editor_graph(workflow, out)
    (ours,) = nodes_of(out, vocabulary.WEIGHTS)
    assert ours["widgets_values"] == ["1.0, 0.5", "random", 4, 0, 9999, 0, 0, "full batch", 0]
    assert any("timing 'random' is drawn from seed (0)" in line for line in report)
    (schedule,) = nodes_of(out, vocabulary.PROMPT_SCHEDULE)
    assert input_origin(out, schedule, "weights_strategy") == (vocabulary.WEIGHTS, 5)
    assert schedule["widgets_values"] == ["a cat\na dog"]
    (combined,) = nodes_of(out, vocabulary.COMBINE_WEIGHTS)
    assert input_origin(out, combined, "weights_1") == (vocabulary.WEIGHTS, 1)
    assert combined["widgets_values"] == [0.0, 0.3]


def test_enhancer_sets_encodes_tiles_and_refuses_averaging_its_two_encodings():
    widgets = {"weight": 0.8, "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
               "embeds_scaling": "V only", "enhance_tiles": 3, "enhance_ratio": 0.6}  # fmt: skip
    out, _ = convert(image_prompt_api("IPAdapterClipVisionEnhancer", **widgets))
    ((_, encode),) = made(out, vocabulary.ENCODE)
    assert (encode["inputs"]["enhance_tiles"], encode["inputs"]["enhance_ratio"]) == (3, 0.6)
    widgets["combine_embeds"] = "average"
    with pytest.raises(NotConvertible, match="IPAdapterClipVisionEnhancer .*two encodings"):
        convert(image_prompt_api("IPAdapterClipVisionEnhancer", **widgets))
    widgets["enhance_tiles"] = 1  # one encoding of one picture: averaging it changes nothing
    convert(image_prompt_api("IPAdapterClipVisionEnhancer", **widgets))


def test_tiled_becomes_tiles_encode_and_apply_with_the_tiles_masks():
    workflow = image_prompt_api("IPAdapterTiled", weight=0.7, weight_type="ease in", combine_embeds="concat",
                                start_at=0.0, end_at=1.0, sharpening=0.3, embeds_scaling="V only")  # fmt: skip
    workflow["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}}
    workflow["8"] = {"class_type": "MaskToImage", "inputs": {"mask": ["5", 2]}}
    out, _ = convert(workflow)
    check_api_graph(out)
    ((tiles_id, tiles),) = made(out, vocabulary.TILES)
    ((encode_id, encode),) = made(out, vocabulary.ENCODE)
    assert tiles["inputs"] == {"sharpening": 0.3, "image": ["3", 0]}
    assert encode["inputs"]["image"] == [tiles_id, 0]
    assert out["5"]["inputs"]["attn_mask"] == [tiles_id, 1] and out["5"]["inputs"]["embeds"] == [encode_id, 0]
    assert out["7"]["inputs"]["images"] == [tiles_id, 0] and out["8"]["inputs"]["mask"] == [tiles_id, 1]


def test_load_embeds_gets_the_clip_vision_of_its_consumer():
    workflow = api_graph()
    workflow["8"] = {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": "embeds/face.ipadpt"}}
    workflow["6"]["inputs"]["pos_embed"] = ["8", 0]
    workflow["6"]["inputs"]["clip_vision"] = ["3", 0]
    del workflow["6"]["inputs"]["neg_embed"]
    out, _ = convert(workflow)
    assert out["8"] == {"class_type": vocabulary.LOAD_EMBEDS, "inputs": {"embeds_file": "embeds/face.ipadpt",
                                                                         "clip_vision": ["3", 0]}}  # fmt: skip
    del workflow["6"]["inputs"]["clip_vision"]  # nor a Unified Loader: left unconnected, and said
    out, report = convert(workflow)
    assert "clip_vision" not in out["8"]["inputs"] and any("needs clip_vision" in line for line in report)


def test_regional_bundles_map_onto_ours_with_from_params_given_the_encoder():
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "2": {"class_type": "IPAdapterUnifiedLoader", "inputs": {"model": ["1", 0], "preset": "STANDARD (medium strength)"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "left.png"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "left", "clip": ["1", 1]}},
        "5": {"class_type": "IPAdapterRegionalConditioning", "inputs": {
            "image": ["3", 0], "mask": ["3", 1], "positive": ["4", 0], "image_weight": 0.7, "prompt_weight": 1.5,
            "weight_type": "ease out", "start_at": 0.1, "end_at": 0.8}},
        "6": {"class_type": "IPAdapterRegionalConditioning", "inputs": {
            "image": ["3", 0], "image_weight": 1.0, "prompt_weight": 1.0, "weight_type": "linear", "start_at": 0.0,
            "end_at": 1.0}},
        "7": {"class_type": "IPAdapterCombineParams", "inputs": {"params_1": ["5", 0], "params_2": ["6", 0]}},
        "8": {"class_type": "IPAdapterFromParams", "inputs": {
            "model": ["2", 0], "ipadapter": ["2", 1], "ipadapter_params": ["7", 0], "combine_embeds": "average",
            "embeds_scaling": "K+V"}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["8", 0], "positive": ["5", 1]}},
    }  # fmt: skip
    out, _ = convert(workflow)
    check_api_graph(out)
    assert out["5"] == {"class_type": vocabulary.REGIONAL, "inputs": {
        "image_weight": 0.7, "prompt_weight": 1.5, "weight_type": "ease out", "start_at": 0.1, "end_at": 0.8,
        "image": ["3", 0], "mask": ["3", 1], "positive": ["4", 0]}}  # fmt: skip
    assert out["7"] == {"class_type": vocabulary.COMBINE_PARAMS, "inputs": {"params_1": ["5", 0], "params_2": ["6", 0]}}
    assert out["8"] == {"class_type": vocabulary.FROM_PARAMS, "inputs": {
        "combine_embeds": "average", "embeds_scaling": "K+V", "crop": "center", "model": ["1", 0], "ipadapter": ["2", 0],
        "clip_vision": ["2", 1], "ipadapter_params": ["7", 0]}}  # fmt: skip
    assert out["9"]["inputs"] == {"model": ["8", 0], "positive": ["5", 1]}


@pytest.mark.parametrize("node_type", ["IPAdapterAdvanced", "IPAdapterPreciseStyleTransfer"])
def test_combine_embeds_over_an_image_batch_encodes_each_picture_and_combines_them(node_type):
    widgets = {"weight": 0.8, "combine_embeds": "subtract", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}
    widgets.update({"weight_type": "linear"} if node_type == "IPAdapterAdvanced" else {"style_boost": 0.8})
    workflow = image_prompt_api(node_type, **widgets)
    workflow["7"] = {"class_type": "PrepImageForClipVision", "inputs": {"image": ["4", 0], "interpolation": "LANCZOS",
                                                                        "crop_position": "top", "sharpening": 0.0}}  # fmt: skip
    workflow["8"] = {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["7", 0]}}
    workflow["9"] = {"class_type": "ImageBatch", "inputs": {"image1": ["8", 0], "image2": ["3", 0]}}
    workflow["5"]["inputs"]["image"] = ["9", 0]
    out, report = convert(workflow)
    check_api_graph(out)
    ((combine_id, combine),) = made(out, vocabulary.COMBINE)
    assert out["5"]["inputs"]["embeds"] == [combine_id, 0] and combine["inputs"]["method"] == "subtract"
    encodes = dict(made(out, vocabulary.ENCODE))
    pictures = [encodes[combine["inputs"][f"embeds_{index}"][0]]["inputs"]["image"] for index in (1, 2, 3)]
    assert pictures == [["3", 0], ["7", 0], ["3", 0]]  # the batch's order: (3, prep of 4), 3
    assert any("3 pictures of its ImageBatch" in line for line in report)
    assert any("took their mean" in line for line in report)  # subtract of three differs from the port's
    workflow["7"]["inputs"]["image"] = ["10", 0]  # a picture of unknown count: refused as before
    workflow["10"] = {"class_type": "VHS_LoadVideo", "inputs": {}}
    with pytest.raises(NotConvertible, match="combine_embeds 'subtract' over a batch"):
        convert(workflow)


@pytest.mark.parametrize(("node_type", "weight_type"), [("IPAdapterAdvanced", "ease in"),
                                                        ("IPAdapter", "prompt is more important")])  # fmt: skip
def test_advanced_and_simple_with_a_faceid_adapter_encode_faces_with_the_ports_v2_weight(node_type, weight_type):
    """The port's nodes read InsightFace from its FaceID Unified Loader and gave PlusV2 s = 2 × weight."""
    workflow = faceid_api_graph()
    workflow["3"] = {"class_type": "IPAdapterUnifiedLoaderFaceID", "inputs": {
        "model": ["2", 0], "preset": "FACEID PLUS V2", "lora_strength": 0.5, "provider": "CPU"}}  # fmt: skip
    shape = vocabulary.PORT_NODES[node_type]
    inputs = {**workflow["7"]["inputs"], "weight_type": weight_type, "model": ["3", 0], "ipadapter": ["3", 1]}
    workflow["7"] = {"class_type": node_type, "inputs": {name: inputs[name] for name in
                                                          {*shape.widget_names(), *dict(shape.sockets)} & set(inputs)}}  # fmt: skip
    out, report = convert(workflow)
    check_api_graph(out)
    ((_, encode),) = made(out, vocabulary.ENCODE_FACE)
    assert encode["inputs"]["insightface"] == ["3", 2]
    apply = out["7"]["inputs"]
    assert out["7"]["class_type"] == vocabulary.APPLY_ADVANCED and apply["model"] == ["1", 0]
    assert (apply["faceid_v2_weight"], apply["lora_strength"]) == (1.8, 0.5 + 0.7)  # the loader's LoRA and #2's
    assert apply["weight_type"] == ("ease in" if node_type == "IPAdapterAdvanced" else "ease out")
    assert any("2 × weight" in line for line in report)


def test_faceid_lora_strength_from_a_link_is_refused_not_guessed():
    workflow = faceid_api_graph()
    workflow["2"]["inputs"]["strength_model"] = ["10", 0]
    workflow["10"] = {"class_type": "PrimitiveFloat", "inputs": {"value": 0.4}}
    with pytest.raises(NotConvertible, match="IPAdapterFaceID .*strength_model of #2 comes from a link"):
        convert(workflow)
