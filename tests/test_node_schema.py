"""The nodes' public interface, pinned: a rename, a reorder or a changed default breaks saved workflows.

The golden file tests/golden/node_schema.json holds, per node (in the extension's order): id, display name, category,
flags, every input in order (section, type, widget settings) and every output (type, name). It is taken from
`GET_NODE_INFO_V1()` (what /object_info serves) with only the volatile part removed: the loaders' file lists.
Tooltip and description texts are not pinned (wording may improve); that they exist is checked instead.

After an intended change, regenerate the golden file explicitly and review its diff:
    UPDATE_GOLDEN=1 COMFYUI_DIR=... python -m pytest tests/test_node_schema.py
"""

import asyncio
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

GOLDEN = Path(__file__).resolve().parent / "golden" / "node_schema.json"
NODE_ID_PREFIX = "DecoupledIPAdapter"
SOCKET_TYPE_PREFIX = "DECOUPLED_IPADAPTER"
# (node id, input name) -> the widget setting whose value depends on the machine, and what the golden file says instead
VOLATILE = {
    ("DecoupledIPAdapterLoader", "ipadapter_name"): ("options", "<the files in the ipadapter model folders>"),
    ("DecoupledIPAdapterOpenCLIPVisionLoader", "clip_name"): ("options", "<the files in the clip_vision model folders>"),
    ("DecoupledIPAdapterOpenCLIPLoader", "clip_name"): ("options", "<the files in the clip_vision model folders>"),
    ("DecoupledIPAdapterLoadEmbeds", "embeds_file"): ("options", "<the .safetensors files in the input folder and the port's .ipadpt files under it>"),
    ("DecoupledIPAdapterSigLIPLoader", "clip_name"): ("options", "<the files in the clip_vision model folders>"),
    ("DecoupledIPAdapterInsightFaceLoader", "model_name"): ("options", "<the packs in the insightface model folders>"),
    ("DecoupledIPAdapterInsightFaceLoader", "provider"): ("options", "<CPU and the onnxruntime providers installed>"),
    ("DecoupledIPAdapterUnifiedLoaderFaceID", "provider"): ("options", "<CPU and the onnxruntime providers installed>"),
}
NOT_PINNED = {"tooltip"}


@pytest.fixture(scope="module")
def node_classes(comfy_host):
    from decoupled_ipadapter.nodes import DecoupledIPAdapterExtension

    return asyncio.run(DecoupledIPAdapterExtension().get_node_list())


def input_entries(info: dict) -> list[tuple[str, str, str, dict]]:
    """(section, name, type, settings) of every input, in the order ComfyUI shows them."""
    entries = []
    for section, names in info["input_order"].items():
        for name in names:
            io_type, *rest = info["input"][section][name]
            entries.append((section, name, io_type, dict(rest[0]) if rest else {}))
    return entries


def public_schema(node_class) -> dict:
    info = node_class.GET_NODE_INFO_V1()
    inputs = []
    for section, name, io_type, settings in input_entries(info):
        pinned = {key: value for key, value in settings.items() if key not in NOT_PINNED}
        volatile = VOLATILE.get((info["name"], name))
        if volatile is not None:
            pinned[volatile[0]] = volatile[1]
        inputs.append({"name": name, "section": section, "type": io_type, **pinned})
    outputs = [
        {"name": name, "type": io_type, "is_list": is_list}
        for io_type, name, is_list in zip(info["output"], info["output_name"], info["output_is_list"], strict=True)
    ]
    return {
        "node_id": info["name"],
        "display_name": info["display_name"],
        "category": info["category"],
        "output_node": info["output_node"],
        "deprecated": info["deprecated"],
        "experimental": info["experimental"],
        "inputs": inputs,
        "outputs": outputs,
    }


def test_public_schema_matches_the_golden_file(node_classes):
    current = [public_schema(node_class) for node_class in node_classes]
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(current, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        pytest.skip(f"UPDATE_GOLDEN=1: wrote {GOLDEN}; review its diff, then run again without UPDATE_GOLDEN")
    assert GOLDEN.is_file(), f"{GOLDEN} is missing; create it with UPDATE_GOLDEN=1 (see this file's docstring)"
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert [node["node_id"] for node in current] == [node["node_id"] for node in golden], "nodes added, removed or renamed"
    for now, pinned in zip(current, golden):
        assert now == pinned, (
            f"the public schema of {pinned['node_id']} changed; saved workflows may break. If intended, regenerate "
            "tests/golden/node_schema.json with UPDATE_GOLDEN=1 and review the diff."
        )


def test_node_ids_and_socket_types_carry_the_pack_prefix(node_classes):
    """Unprefixed ids or types would collide with other IP-Adapter packs (a later pack silently replaces a node)."""
    from comfy_api.latest import io

    from decoupled_ipadapter.nodes.types import EmbedsType, IPAdapterType

    comfy_types = {
        value.io_type
        for value in vars(io).values()
        if isinstance(value, type) and isinstance(getattr(value, "io_type", None), str)
    }
    assert {"MODEL", "IMAGE", "CLIP_VISION", "FLOAT", "COMBO"} <= comfy_types
    for pack_type in (IPAdapterType, EmbedsType):
        assert pack_type.io_type.startswith(SOCKET_TYPE_PREFIX), pack_type.io_type
    for node_class in node_classes:
        info = node_class.GET_NODE_INFO_V1()
        assert info["name"].startswith(NODE_ID_PREFIX), info["name"]
        used = {io_type for section, _, io_type, _ in input_entries(info) if section != "hidden"} | set(info["output"])
        for io_type in used - comfy_types:
            assert io_type.startswith(SOCKET_TYPE_PREFIX), f"{info['name']}: custom socket type {io_type}"


def test_every_node_input_and_output_is_documented(node_classes):
    for node_class in node_classes:
        info = node_class.GET_NODE_INFO_V1()
        node = info["name"]
        assert isinstance(info["description"], str) and info["description"].strip(), f"{node}: no description"
        for section, name, _, settings in input_entries(info):
            if section == "hidden":  # ComfyUI's own (prompt, extra_pnginfo of an output node): not shown, no tooltip
                continue
            assert str(settings.get("tooltip") or "").strip(), f"{node}: input {name} has no tooltip"
        assert len(info["output_tooltips"]) == len(info["output"])
        for name, tooltip in zip(info["output_name"], info["output_tooltips"]):
            assert str(tooltip or "").strip(), f"{node}: output {name} has no tooltip"
