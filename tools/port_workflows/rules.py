"""What replaces each of the port's nodes: the format-neutral view of a workflow (`Graph`) the rules read, one rule
per port node type, and the resolution of a port node's outputs to what replaces them.

A rule returns the nodes that replace a port node (the first keeps its id) and what now feeds each of its outputs'
consumers; formats.py reads a workflow into the view and writes the result back in the input's format. Nodes that
are not the port's keep their id, place, widget values and links.
"""

import re
from dataclasses import dataclass, field

from .vocabulary import (
    APPLY,
    APPLY_ADVANCED,
    COMBINE,
    COMBINE_METHODS,
    ENCODE,
    LOADER,
    NOISE,
    OUR_NODES,
    PORT_NODES_NOT_YET,
    PREP_IMAGE,
    SAVE_EMBEDS,
    SIMPLE_WEIGHT_TYPES,
    UNIFIED_LOADER,
    UNIFIED_PRESETS,
)

# The port's loaders whose IPADAPTER output carries the image encoder they loaded.
UNIFIED_LOADERS = ("IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderFaceID", "IPAdapterUnifiedLoaderCommunity")
REROUTE = "Reroute"
# Nodes whose first widget names the checkpoint or diffusion model a MODEL comes from.
MODEL_FILE_WIDGETS = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name",
                      "ImageOnlyCheckpointLoader": "ckpt_name", "CheckpointLoader|pysssss": "ckpt_name"}  # fmt: skip
SDXL_NAME = re.compile(r"xl|pony|illustrious|noob", re.IGNORECASE)
SD15_NAME = re.compile(r"v1-5|sd15|sd_15|sd1\.5|1\.5", re.IGNORECASE)
KOLORS_FILE = re.compile(r"kolors|ip.adapter.plus.gen", re.IGNORECASE)  # the port's names of Kolors' files
WHAT_DIFFERS = "README, 'Coming from ComfyUI_IPAdapter_plus'"


class NotConvertible(Exception):
    """A port node this converter cannot map; its message says why."""


@dataclass(frozen=True)
class Source:
    """Output `slot` of node `node` of the input workflow (a port node's is resolved to what replaces it)."""

    node: str
    slot: int


@dataclass(frozen=True)
class Made:
    """Output `slot` of the node `key` that replaces port node `node`."""

    node: str
    key: str
    slot: int


@dataclass
class PortNode:
    id: str
    type: str
    values: dict  # widget values by name, the port's defaults where the save is older than the widget
    sources: dict  # linked inputs by name: Source


@dataclass
class NewNode:
    key: str
    type: str
    values: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)  # input name -> Source | Made


@dataclass
class Replacement:
    """What replaces one port node: its nodes (the first keeps the port node's id), what feeds each of its output
    slots' consumers now (None: nothing, the consumer's input is left empty), and notes for the report."""

    nodes: list
    outputs: dict
    notes: list = field(default_factory=list)


class Graph:
    """The format-neutral view the rules read: node types, the port nodes' widget values and linked inputs, and
    where any node's input comes from."""

    def __init__(self, types: dict, inputs: dict, values: dict):
        self.types = types  # id -> node type
        self._inputs = inputs  # id -> {input name: Source}
        self._values = values  # id -> {widget name: value} (port nodes and the model loaders only)

    def port_node(self, node_id: str) -> PortNode:
        node_type = self.types[node_id]
        return PortNode(node_id, node_type, dict(self._values.get(node_id, {})), dict(self._inputs.get(node_id, {})))

    def source(self, node_id: str, input_name: str) -> Source | None:
        return self._inputs.get(node_id, {}).get(input_name)

    def origin(self, source: Source | None) -> Source | None:
        """`source`, followed back through reroutes."""
        seen = set()
        while source is not None and self.types.get(source.node) == REROUTE and source.node not in seen:
            seen.add(source.node)
            inputs = self._inputs.get(source.node, {})
            source = next(iter(inputs.values()), None)
        return source

    def model_file(self, source: Source | None) -> str | None:
        """The checkpoint or diffusion model file a MODEL comes from, followed back through the nodes that pass a
        model on (LoRA loaders, model patches, the port's nodes)."""
        seen = set()
        source = self.origin(source)
        while source is not None and source.node not in seen:
            seen.add(source.node)
            node_type = self.types.get(source.node)
            widget = MODEL_FILE_WIDGETS.get(node_type)
            if widget is not None:
                value = self._values.get(source.node, {}).get(widget)
                return value if isinstance(value, str) else None
            source = self.origin(self.source(source.node, "model"))
        return None


# --- the rules -------------------------------------------------------------------------------------------------


def _carry(node: PortNode, new: NewNode, port_name: str, our_name: str | None = None, value=None) -> None:
    """Our input `our_name` takes the port input's link if it has one, else its value (or `value`)."""
    our_name = our_name or port_name
    if port_name in node.sources:
        new.sources[our_name] = node.sources[port_name]
    else:
        new.values[our_name] = node.values[port_name] if value is None else value


def _fixed_value(node: PortNode, name: str):
    """A widget whose value decides the mapping: it must not come from a link."""
    if name in node.sources:
        raise NotConvertible(f"its {name} comes from a link, and the mapping depends on its value")
    return node.values[name]


def _clip_vision(graph: Graph, node: PortNode) -> Source | Made:
    """The image encoder the port node encodes with: its own clip_vision input, else the one the Unified Loader
    that gave its ipadapter loaded."""
    if "clip_vision" in node.sources:
        return node.sources["clip_vision"]
    adapter = graph.origin(node.sources.get("ipadapter"))
    if adapter is not None and graph.types.get(adapter.node) in UNIFIED_LOADERS:
        return Made(adapter.node, "loader", 1)
    raise NotConvertible("it has no clip_vision input and its ipadapter does not come from a Unified Loader")


def _encode(graph: Graph, node: PortNode, *, image: str, negative: str | None = None) -> NewNode:
    """Encode Image for a port node that encoded its pictures itself (centre crop, as the port's encoding did)."""
    encode = NewNode("encode", ENCODE, {"crop": "center"})
    encode.sources["ipadapter"] = node.sources.get("ipadapter")
    encode.sources["clip_vision"] = _clip_vision(graph, node)
    encode.sources["image"] = node.sources.get(image)
    if negative is not None and negative in node.sources:
        encode.sources["negative_image"] = node.sources[negative]
    return encode


def _apply_advanced(node: PortNode, embeds: Source | Made, *, weight_type) -> NewNode:
    apply = NewNode("apply", APPLY_ADVANCED, {"block_weights": "", "composition_weight": 1.0})
    apply.sources["model"] = node.sources.get("model")
    apply.sources["ipadapter"] = node.sources.get("ipadapter")
    apply.sources["embeds"] = embeds
    for name in ("weight", "start_at", "end_at"):
        _carry(node, apply, name)
    apply.values["weight_type"] = weight_type
    if "embeds_scaling" in node.values:
        _carry(node, apply, "embeds_scaling")
    else:  # the port's IPAdapter node scales V only
        apply.values["embeds_scaling"] = "V only"
    if "attn_mask" in node.sources:
        apply.sources["attn_mask"] = node.sources["attn_mask"]
    return apply


def _check_combine(graph: Graph, node: PortNode, image: str) -> None:
    method = _fixed_value(node, "combine_embeds")
    if method not in COMBINE_METHODS:
        raise NotConvertible(f"combine_embeds '{method}' is not one of the port's methods")
    origin = graph.origin(node.sources.get(image))
    if method != "concat" and (origin is None or graph.types.get(origin.node) != "LoadImage"):
        raise NotConvertible(
            f"combine_embeds '{method}' over a batch of references: Encode makes one prompt of a batch (concat); "
            "use Combine Embeds on separately encoded references"
        )


MIDDLE_BLOCK_NOTE = (
    "the port never patches the UNet's middle block (its key is wrong); this pack does, as the reference does, so "
    f"the same weight acts a little more strongly ({WHAT_DIFFERS})"
)
NEGATIVE_NOTE = (
    "without a negative image, a plus adapter's negative here is the reference's (the encoder on zero pixel values), "
    f"not the port's black picture ({WHAT_DIFFERS})"
)


def convert_model_loader(graph: Graph, node: PortNode) -> Replacement:
    file = node.values["ipadapter_file"]
    if isinstance(file, str) and KOLORS_FILE.search(file):
        raise NotConvertible(f"'{file}' is a Kolors adapter, and Kolors is not a model family of this pack")
    loader = NewNode("loader", LOADER)
    _carry(node, loader, "ipadapter_file", "ipadapter_name")
    return Replacement([loader], {0: Made(node.id, "loader", 0)})


def _base_of(graph: Graph, node: PortNode) -> tuple[str, str]:
    """(base, why) of the model a port Unified Loader was given: the port asked the model; here its file name
    tells, and the report says which."""
    name = graph.model_file(node.sources.get("model"))
    if name is None:
        return "SD1.5", "the model's file could not be found in the graph, so SD1.5 was assumed"
    if SDXL_NAME.search(name) and not SD15_NAME.search(name):
        return "SDXL", f"'{name}' looks like an SDXL model"
    return "SD1.5", f"'{name}' looks like an SD1.5 model"


def convert_unified_loader(graph: Graph, node: PortNode) -> Replacement:
    preset = _fixed_value(node, "preset")
    base, why = _base_of(graph, node)
    presets = UNIFIED_PRESETS[base]
    if preset not in presets:
        raise NotConvertible(f"preset '{preset}' has no {base} file ({why})")
    loader = NewNode("loader", UNIFIED_LOADER, {"preset": presets[preset]})
    notes = [f"preset '{preset}' became '{presets[preset]}': {why}; pick the other base's preset if that is wrong"]
    if "ipadapter" in node.sources:
        notes.append("its ipadapter input (loaders chained) is dropped: each loader here loads its own files")
    outputs = {0: node.sources.get("model"), 1: Made(node.id, "loader", 0)}
    return Replacement([loader], outputs, notes)


def convert_simple(graph: Graph, node: PortNode) -> Replacement:
    weight_type = SIMPLE_WEIGHT_TYPES.get(_fixed_value(node, "weight_type"))
    if weight_type is None:
        raise NotConvertible(f"weight_type '{node.values['weight_type']}' is not one of the port's")
    encode = _encode(graph, node, image="image")
    embeds = Made(node.id, "encode", 0)
    if weight_type == "linear":
        apply = NewNode("apply", APPLY)
        apply.sources.update({name: node.sources.get(name) for name in ("model", "ipadapter")})
        apply.sources["embeds"] = embeds
        for name in ("weight", "start_at", "end_at"):
            _carry(node, apply, name)
        if "attn_mask" in node.sources:
            apply.sources["attn_mask"] = node.sources["attn_mask"]
    else:
        apply = _apply_advanced(node, embeds, weight_type=weight_type)
    return Replacement([apply, encode], {0: Made(node.id, "apply", 0)}, [MIDDLE_BLOCK_NOTE, NEGATIVE_NOTE])


def convert_advanced(graph: Graph, node: PortNode) -> Replacement:
    _check_combine(graph, node, "image")
    encode = _encode(graph, node, image="image", negative="image_negative")
    apply = _apply_advanced(node, Made(node.id, "encode", 0), weight_type=_fixed_value(node, "weight_type"))
    notes = [MIDDLE_BLOCK_NOTE]
    if "image_negative" not in node.sources:
        notes.append(NEGATIVE_NOTE)
    return Replacement([apply, encode], {0: Made(node.id, "apply", 0)}, notes)


def convert_encoder(graph: Graph, node: PortNode) -> Replacement:
    if "weight" in node.sources or node.values["weight"] != 1.0:
        raise NotConvertible(f"its weight {node.values['weight']} scales the embeds, which Encode does not do yet")
    if "mask" in node.sources:
        raise NotConvertible("its mask over the reference pixels is not in Encode yet")
    encode = _encode(graph, node, image="image")
    embeds = Made(node.id, "encode", 0)
    notes = ["its pos_embed and neg_embed are one embeds output here (the negative travels with the positive)"]
    return Replacement([encode], {0: embeds, 1: embeds}, notes)


def _embeds_root(graph: Graph, source: Source | None) -> Source | None:
    origin = graph.origin(source)
    return None if origin is None else Source(origin.node, 0)


def convert_embeds(graph: Graph, node: PortNode) -> Replacement:
    positive = node.sources.get("pos_embed")
    negative = node.sources.get("neg_embed")
    if negative is not None and _embeds_root(graph, negative) != _embeds_root(graph, positive):
        raise NotConvertible("its neg_embed comes from another node than its pos_embed; here embeds carry their own "
                             "negative")  # fmt: skip
    apply = _apply_advanced(node, positive, weight_type=_fixed_value(node, "weight_type"))
    notes = [MIDDLE_BLOCK_NOTE]
    if negative is None:
        notes.append("without neg_embed the port used zeros or a black picture's encoding; here the negative comes "
                     f"with the embeds, from Encode ({WHAT_DIFFERS})")  # fmt: skip
    return Replacement([apply], {0: Made(node.id, "apply", 0)}, notes)


def convert_combine(graph: Graph, node: PortNode) -> Replacement:
    method = _fixed_value(node, "method")
    if method not in COMBINE_METHODS:
        raise NotConvertible(f"method '{method}' is not in Combine Embeds here")
    linked = [node.sources[f"embed{index}"] for index in range(1, 6) if f"embed{index}" in node.sources]
    if len(linked) == 1:
        return Replacement([], {0: linked[0]}, ["it combined a single input, so it was left out"])
    combine = NewNode("combine", COMBINE, {"method": method})
    combine.sources.update({f"embeds_{index}": source for index, source in enumerate(linked, start=1)})
    notes = ["the negatives are combined too (the average of the inputs' negatives for the arithmetic methods)"]
    if method == "subtract" and len(linked) > 2:
        notes.append("subtract takes the later inputs from the first one by one here; the port took their mean "
                     f"({WHAT_DIFFERS})")  # fmt: skip
    if method == "norm average":
        notes.append("norm average makes each input unit-length here; the port divided by the norm across the inputs "
                     f"({WHAT_DIFFERS})")  # fmt: skip
    return Replacement([combine], {0: Made(node.id, "combine", 0)}, notes)


def convert_save_embeds(graph: Graph, node: PortNode) -> Replacement:
    save = NewNode("save", SAVE_EMBEDS, sources={"embeds": node.sources.get("embeds")})
    _carry(node, save, "filename_prefix")
    return Replacement([save], {}, ["embeds are saved as .safetensors (with their negative), not the port's .ipadpt"])


def convert_noise(graph: Graph, node: PortNode) -> Replacement:
    noise = NewNode("noise", NOISE, {"seed": 0})
    for name in ("type", "strength", "blur"):
        _carry(node, noise, name)
    if "image_optional" in node.sources:
        noise.sources["image"] = node.sources["image_optional"]
    notes = ["the noise is drawn from its seed (0, fixed) here, the port drew it from the picture's pixel sum; "
             f"dissolve replaces whole pixels here, the port single channels ({WHAT_DIFFERS})"]  # fmt: skip
    return Replacement([noise], {0: Made(node.id, "noise", 0)}, notes)


def convert_prep_image(graph: Graph, node: PortNode) -> Replacement:
    prep = NewNode("prep", PREP_IMAGE, {"size": 224}, {"image": node.sources.get("image")})
    for name in ("interpolation", "crop_position", "sharpening"):
        _carry(node, prep, name)
    return Replacement([prep], {0: Made(node.id, "prep", 0)})


RULES = {
    "IPAdapterModelLoader": convert_model_loader,
    "IPAdapterUnifiedLoader": convert_unified_loader,
    "IPAdapter": convert_simple,
    "IPAdapterAdvanced": convert_advanced,
    "IPAdapterEncoder": convert_encoder,
    "IPAdapterEmbeds": convert_embeds,
    "IPAdapterCombineEmbeds": convert_combine,
    "IPAdapterSaveEmbeds": convert_save_embeds,
    "IPAdapterNoise": convert_noise,
    "PrepImageForClipVision": convert_prep_image,
}
PORT_NODE_TYPES = set(RULES) | set(PORT_NODES_NOT_YET)


def is_port_node(node_type: str) -> bool:
    return node_type in PORT_NODE_TYPES


def replacements(graph: Graph) -> tuple[dict, dict]:
    """({port node id: Replacement}, {port node type: why not}) for every port node of the graph."""
    done, refused = {}, {}
    for node_id, node_type in graph.types.items():
        if not is_port_node(node_type):
            continue
        if node_type in PORT_NODES_NOT_YET:
            refused.setdefault(node_type, PORT_NODES_NOT_YET[node_type])
            continue
        try:
            done[node_id] = RULES[node_type](graph, graph.port_node(node_id))
        except NotConvertible as error:
            refused.setdefault(node_type, f"#{node_id}: {error}")
    return done, refused


class Resolver:
    """Turns a rule's Source or Made into (final node id, slot), following port nodes to what replaces them."""

    def __init__(self, done: dict, made_ids: dict):
        self.done = done
        self.made_ids = made_ids  # (port id, key) -> final id

    def __call__(self, source) -> tuple[str, int] | None:
        seen = set()
        while isinstance(source, Source) and source.node in self.done:
            if source in seen:
                raise NotConvertible(f"#{source.node}: its outputs feed each other")
            seen.add(source)
            outputs = self.done[source.node].outputs
            if source.slot not in outputs:
                raise NotConvertible(f"#{source.node}: its output {source.slot} has no counterpart here")
            source = outputs[source.slot]
        if source is None:
            return None
        if isinstance(source, Made):
            return self.made_ids[(source.node, source.key)], source.slot
        return source.node, source.slot


def our_widget_values(new: NewNode, *, editor: bool) -> list:
    """The widgets of our node in the front-end's order (a linked widget keeps its default as its value); in the
    editor format a seed is followed by its control_after_generate value, "fixed": a converted seed stays put."""
    shape = OUR_NODES[new.type]
    values = []
    for name, default in shape.widgets:
        values.append(new.values.get(name, default))
        if editor and name in shape.controlled:
            values.append("fixed")
    return values


def our_output_type(node_type: str, slot: int) -> str | None:
    shape = OUR_NODES.get(node_type)
    return None if shape is None else shape.outputs[slot][1]
