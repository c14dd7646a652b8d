"""Reading ComfyUI's two workflow formats into the converter's view, and writing a conversion back in the same format.

Editor format: {"nodes": [...], "links": [[id, origin, origin_slot, target, target_slot, type], ...], "groups", ...}
(links may also be objects with those names). API format: {id: {"class_type", "inputs": {name: value | [id, slot]}}}.
"""

import copy

from .rules import (
    CORE_NODE_WIDGETS,
    Graph,
    NotConvertible,
    Resolver,
    Source,
    is_port_node,
    our_output_type,
    our_widget_values,
    replacements,
)
from .vocabulary import OUR_NODES, PORT_NODES

LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
EXTRA_NODE_OFFSET = 40  # px between a port node's place and the next node that replaces it, below it
INPUT_ROW_HEIGHT = 22


def is_editor_format(workflow: dict) -> bool:
    return isinstance(workflow.get("nodes"), list)


def _named_values(node_type: str, saved) -> dict:
    """The port node's widget values by name; a save older than a widget gives its default."""
    shape = PORT_NODES.get(node_type)
    if shape is None or not isinstance(saved, list):
        return {}
    return {name: saved[index] if index < len(saved) else default for index, (name, default) in enumerate(shape.widgets)}


def _is_api_link(value) -> bool:
    """An API-format input that is a link: [origin id, output slot]."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _links_of(workflow: dict) -> list[dict]:
    return [link if isinstance(link, dict) else dict(zip(LINK_FIELDS, link)) for link in workflow.get("links") or []]


def read_editor(workflow: dict) -> Graph:
    links = {link["id"]: link for link in _links_of(workflow)}
    types, inputs, values = {}, {}, {}
    for node in workflow["nodes"]:
        node_id = str(node["id"])
        types[node_id] = node["type"]
        linked = {}
        for entry in node.get("inputs") or []:
            link = links.get(entry.get("link"))
            if link is not None:
                linked[entry["name"]] = Source(str(link["origin_id"]), link["origin_slot"])
        inputs[node_id] = linked
        if node["type"] in PORT_NODES:
            values[node_id] = _named_values(node["type"], node.get("widgets_values"))
        elif node["type"] in CORE_NODE_WIDGETS and isinstance(node.get("widgets_values"), list):
            values[node_id] = dict(zip(CORE_NODE_WIDGETS[node["type"]], node["widgets_values"]))
    return Graph(types, inputs, values)


def read_api(workflow: dict) -> Graph:
    types, inputs, values = {}, {}, {}
    for node_id, node in workflow.items():
        types[node_id] = node["class_type"]
        linked, plain = {}, {}
        for name, value in node.get("inputs", {}).items():
            if _is_api_link(value):
                linked[name] = Source(str(value[0]), value[1])
            else:
                plain[name] = value
        inputs[node_id] = linked
        shape = PORT_NODES.get(node["class_type"])
        if shape is not None:
            values[node_id] = {name: plain.get(name, default) for name, default in shape.widgets}
        elif node["class_type"] in CORE_NODE_WIDGETS:
            values[node_id] = plain
    return Graph(types, inputs, values)


def _made_ids(done: dict, first_free: int) -> dict:
    """(port id, key) -> id (text): the first node of each replacement keeps the port node's id, the others get new
    ones from `first_free` on."""
    ids, next_id = {}, first_free
    for port_id, replacement in done.items():
        for index, new in enumerate(replacement.nodes):
            if index == 0:
                ids[(port_id, new.key)] = port_id
            else:
                ids[(port_id, new.key)] = str(next_id)
                next_id += 1
    return ids


def _refused_line(refused: dict) -> str:
    return " | ".join(f"{node_type} ({why})" for node_type, why in sorted(refused.items()))


def _check_refused(refused: dict) -> None:
    if refused:
        raise NotConvertible(_refused_line(refused))


def _notes(done: dict, made_ids: dict) -> list[str]:
    lines = []
    for port_id, replacement in done.items():
        made = " + ".join(f"{new.type} #{made_ids[(port_id, new.key)]}" for new in replacement.nodes) or "(left out)"
        lines.append(f"#{port_id} -> {made}")
        lines.extend(f"    check: {note}" for note in replacement.notes)
    return lines


# --- editor format -----------------------------------------------------------------------------------------------


def _node_height(node_type: str) -> int:
    shape = OUR_NODES[node_type]
    return 30 + INPUT_ROW_HEIGHT * (len(shape.sockets) + len(shape.widgets) + max(len(shape.outputs), 1))


def _place(port_node: dict, index: int, made_types: list[str]) -> list:
    """Where the index-th node replacing `port_node` goes: at its place, the later ones below the earlier ones."""
    pos = port_node.get("pos") or [0, 0]
    x, y = (pos["0"], pos["1"]) if isinstance(pos, dict) else pos[:2]  # older saves: {"0": x, "1": y}
    below = sum(_node_height(node_type) + EXTRA_NODE_OFFSET for node_type in made_types[:index])
    return [x, y + below]


def convert_editor(workflow: dict) -> tuple[dict, list[str]]:
    """(the converted workflow, the report's lines); NotConvertible names the port nodes it cannot map."""
    graph = read_editor(workflow)
    done, refused = replacements(graph)
    _check_refused(refused)
    if not done:
        return copy.deepcopy(workflow), []
    nodes_by_id = {str(node["id"]): node for node in workflow["nodes"]}
    last_node_id = max([workflow.get("last_node_id") or 0, *(int(node_id) for node_id in nodes_by_id)])
    made_ids = _made_ids(done, last_node_id + 1)
    resolve = Resolver(done, made_ids)

    made_types = {made_ids[(port_id, new.key)]: new.type for port_id, r in done.items() for new in r.nodes}

    def output_type(origin: tuple[str, int]) -> str:
        node_id, slot = origin
        if node_id in made_types:
            return our_output_type(made_types[node_id], slot)
        return nodes_by_id[node_id]["outputs"][slot]["type"]

    links = []  # [id, origin, origin_slot, target, target_slot, type]
    emptied_inputs = set()  # (node id, input index) of kept nodes whose origin now gives nothing
    for link in _links_of(workflow):
        target = str(link["target_id"])
        if target in done:
            continue
        origin = resolve(Source(str(link["origin_id"]), link["origin_slot"]))
        if origin is None:
            emptied_inputs.add((target, link["target_slot"]))
            continue
        link_type = link["type"] if str(link["origin_id"]) not in done else output_type(origin)
        links.append([link["id"], origin[0], origin[1], target, link["target_slot"], link_type])
    next_link = max([workflow.get("last_link_id") or 0, *(link[0] for link in links)]) + 1

    new_nodes = {}
    for port_id, replacement in done.items():
        port_node = nodes_by_id[port_id]
        made_order = [new.type for new in replacement.nodes]
        for index, new in enumerate(replacement.nodes):
            node_id = made_ids[(port_id, new.key)]
            shape = OUR_NODES[new.type]
            origins = {name: resolve(source) for name, source in new.sources.items()}
            # the sockets, linked or not, then the widgets that take a link (typed by what feeds them)
            entries = [{"name": name, "type": socket_type, "link": None} for name, socket_type in shape.sockets]
            entries += [{"name": name, "type": output_type(origins[name]), "link": None, "widget": {"name": name}}
                        for name, _ in shape.widgets if origins.get(name) is not None]  # fmt: skip
            for slot, entry in enumerate(entries):
                origin = origins.get(entry["name"])
                if origin is None:
                    continue
                entry["link"] = next_link
                links.append([next_link, origin[0], origin[1], node_id, slot, output_type(origin)])
                next_link += 1
            node = {
                "id": int(node_id),
                "type": new.type,
                "pos": _place(port_node, index, made_order),
                "size": [315, _node_height(new.type)],
                "flags": {},
                "order": port_node.get("order", 0),
                "mode": port_node.get("mode", 0),
                "inputs": entries,
                "outputs": [{"name": name, "type": out_type, "links": [], "slot_index": slot}
                            for slot, (name, out_type) in enumerate(shape.outputs)],  # fmt: skip
                "properties": {"Node name for S&R": new.type},
                "widgets_values": our_widget_values(new, editor=True),
            }
            if index == 0:
                for key in ("title", "color", "bgcolor"):
                    if key in port_node:
                        node[key] = port_node[key]
            new_nodes[node_id] = node

    out = copy.deepcopy(workflow)
    nodes = []
    for node in out["nodes"]:
        node_id = str(node["id"])
        if node_id in done:
            nodes.extend(new_nodes[made_ids[(node_id, new.key)]] for new in done[node_id].nodes)
            continue
        for index, entry in enumerate(node.get("inputs") or []):
            if (node_id, index) in emptied_inputs:
                entry["link"] = None
        nodes.append(node)
    by_id = {str(node["id"]): node for node in nodes}
    for node in nodes:
        for output in node.get("outputs") or []:
            output["links"] = []
    for link in links:
        origin_node = by_id[str(link[1])]
        origin_node["outputs"][link[2]]["links"].append(link[0])
    out["nodes"] = nodes
    dict_links = any(isinstance(link, dict) for link in workflow.get("links") or [])
    for link in links:
        link[1], link[3] = int(link[1]), int(link[3])
    out["links"] = [dict(zip(LINK_FIELDS, link)) for link in links] if dict_links else links
    out["last_node_id"] = max(int(node_id) for node_id in by_id)
    out["last_link_id"] = max([workflow.get("last_link_id") or 0, *(link[0] for link in links)])
    return out, _notes(done, made_ids)


# --- API format ----------------------------------------------------------------------------------------------------


def convert_api(workflow: dict) -> tuple[dict, list[str]]:
    graph = read_api(workflow)
    done, refused = replacements(graph)
    _check_refused(refused)
    if not done:
        return copy.deepcopy(workflow), []
    numeric = [int(node_id) for node_id in workflow if node_id.isdigit()]
    made_ids = _made_ids(done, max(numeric, default=0) + 1)
    resolve = Resolver(done, made_ids)
    out = {}
    for node_id, node in workflow.items():
        if node_id in done:
            for new in done[node_id].nodes:
                made_id = made_ids[(node_id, new.key)]
                inputs = dict(zip((name for name, _ in OUR_NODES[new.type].widgets), our_widget_values(new, editor=False)))
                for name, source in new.sources.items():
                    origin = resolve(source)
                    if origin is not None:
                        inputs[name] = [origin[0], origin[1]]
                out[made_id] = {"class_type": new.type, "inputs": inputs}
            continue
        kept = copy.deepcopy(node)
        for name, value in node.get("inputs", {}).items():
            if _is_api_link(value) and str(value[0]) in done:
                origin = resolve(Source(str(value[0]), value[1]))
                if origin is None:
                    del kept["inputs"][name]
                else:
                    kept["inputs"][name] = [origin[0], origin[1]]
        out[node_id] = kept
    return out, _notes(done, made_ids)


def convert(workflow: dict) -> tuple[dict, list[str]]:
    """The workflow with the port's nodes replaced by this pack's, in its own format, and the report's lines."""
    return (convert_editor if is_editor_format(workflow) else convert_api)(workflow)


def port_node_types(workflow: dict) -> set[str]:
    if is_editor_format(workflow):
        return {node["type"] for node in workflow["nodes"] if is_port_node(node["type"])}
    return {node["class_type"] for node in workflow.values() if is_port_node(node.get("class_type", ""))}

