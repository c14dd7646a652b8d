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
    BATCH_NODES,
    COMBINE,
    COMBINE_METHODS,
    COMBINE_PARAMS,
    COMBINE_WEIGHTS,
    COMMUNITY_PRESETS,
    ENCODE,
    ENCODE_FACE,
    FACEID_PRESETS,
    FROM_PARAMS,
    INSIGHTFACE_LOADER,
    LOAD_EMBEDS,
    LOADER,
    NOISE,
    OUR_NODES,
    PORT_NODES,
    PORT_NODES_NOT_YET,
    PREP_IMAGE,
    PROMPT_SCHEDULE,
    PROVIDERS,
    REGIONAL,
    SAVE_EMBEDS,
    SIMPLE_WEIGHT_TYPES,
    TILES,
    UNIFIED_LOADER,
    UNIFIED_LOADER_FACEID,
    UNIFIED_PRESETS,
    WEIGHTS,
    WEIGHTS_FROM_STRATEGY,
)

# The port's loaders whose IPADAPTER output carries the image encoder they loaded.
UNIFIED_LOADERS = ("IPAdapterUnifiedLoader", "IPAdapterUnifiedLoaderFaceID", "IPAdapterUnifiedLoaderCommunity")
REROUTE = "Reroute"
# Nodes whose first widget names the checkpoint or diffusion model a MODEL comes from.
MODEL_FILE_WIDGETS = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name",
                      "ImageOnlyCheckpointLoader": "ckpt_name", "CheckpointLoader|pysssss": "ckpt_name"}  # fmt: skip
# Core LoRA loaders: their widgets in order; one that loads the separate FaceID LoRA file is left out (bypassed)
# where it feeds a FaceID image prompt, and its strength becomes Apply's lora_strength.
LORA_LOADERS = {"LoraLoaderModelOnly": ("lora_name", "strength_model"),
                "LoraLoader": ("lora_name", "strength_model", "strength_clip")}  # fmt: skip
FACEID_LORA_FILE = re.compile(r"faceid.*lora", re.IGNORECASE)
# The widgets the rules read of nodes that are not the port's, by node type, in the front-end's order.
CORE_NODE_WIDGETS = {**{node_type: (name,) for node_type, name in MODEL_FILE_WIDGETS.items()}, **LORA_LOADERS}
FACEID_APPLY_NODES = ("IPAdapterFaceID", "IPAAdapterFaceIDBatch")
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
    left_out: list = field(default_factory=list)  # ids of other nodes it takes the place of (a FaceID LoRA's loader)


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

    def values(self, node_id: str) -> dict:
        return self._values.get(node_id, {})

    def consumers(self, output: Source) -> list[str]:
        """The ids of the nodes with an input that reads `output`."""
        return [node_id for node_id, inputs in self._inputs.items() if output in inputs.values()]

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


def _apply_advanced(node: PortNode, embeds: Source | Made, *, weight_type, weight: str = "weight") -> NewNode:
    apply = NewNode("apply", APPLY_ADVANCED, {"block_weights": "", "composition_weight": 1.0})
    apply.sources["model"] = node.sources.get("model")
    apply.sources["ipadapter"] = node.sources.get("ipadapter")
    apply.sources["embeds"] = embeds
    _carry(node, apply, weight, "weight")
    for name in ("start_at", "end_at"):
        _carry(node, apply, name)
    if node.type in BATCH_NODES:
        apply.values["unfold_batch"] = True
    apply.values["weight_type"] = weight_type
    if "embeds_scaling" in node.values:
        _carry(node, apply, "embeds_scaling")
    else:  # the port's IPAdapter node scales V only
        apply.values["embeds_scaling"] = "V only"
    if "attn_mask" in node.sources:
        apply.sources["attn_mask"] = node.sources["attn_mask"]
    return apply


def _combine_method(node: PortNode) -> str:
    if "combine_embeds" not in node.values:  # the Batch variants: concat
        return "concat"
    method = _fixed_value(node, "combine_embeds")
    if method not in COMBINE_METHODS:
        raise NotConvertible(f"combine_embeds '{method}' is not one of the port's methods")
    return method


def _is_single_picture(graph: Graph, source: Source | None) -> bool:
    """A LoadImage's picture, or the port's Prep Image of one."""
    origin = graph.origin(source)
    node_type = None if origin is None else graph.types.get(origin.node)
    if node_type == "PrepImageForClipVision":
        return _is_single_picture(graph, graph.source(origin.node, "image"))
    return node_type == "LoadImage"


def _batched_pictures(graph: Graph, source: Source | None) -> list[Source] | None:
    """The single pictures a tree of core ImageBatch nodes puts together, in batch order; None for anything else."""
    origin = graph.origin(source)
    if origin is None or graph.types.get(origin.node) != "ImageBatch":
        return None
    pictures = []
    for name in ("image1", "image2"):
        part = graph.source(origin.node, name)
        nested = _batched_pictures(graph, part)
        if nested is None and not _is_single_picture(graph, part):
            return None
        pictures += [part] if nested is None else nested
    return pictures


def _check_combine(graph: Graph, node: PortNode, image: str) -> None:
    """A combine_embeds but concat acts only on a batch, which Encode makes one prompt of (concat)."""
    method = _combine_method(node)
    if method != "concat" and not _is_single_picture(graph, node.sources.get(image)):
        raise NotConvertible(
            f"combine_embeds '{method}' over a batch of references: Encode makes one prompt of a batch (concat); "
            "use Combine Embeds on separately encoded references"
        )


def _references(graph: Graph, node: PortNode) -> tuple[list[NewNode], Made, list[str]]:
    """(the nodes that encode the port node's `image`, the embeds Apply reads, the report's lines): one Encode Image,
    or, for a combine_embeds but concat over a core ImageBatch of single pictures (at most five), an Encode Image per
    picture and Combine Embeds with that method, as the port combined the batch's embeds."""
    method = _combine_method(node)
    pictures = _batched_pictures(graph, node.sources.get("image")) if method != "concat" else None
    if pictures is None or len(pictures) > len(OUR_NODES[COMBINE].sockets):
        _check_combine(graph, node, "image")
        return [_encode(graph, node, image="image", negative="image_negative")], Made(node.id, "encode", 0), []
    encodes = []
    combine = NewNode("combine", COMBINE, {"method": method})
    for index, picture in enumerate(pictures, start=1):
        encode = _encode(graph, node, image="image", negative="image_negative")
        encode.key, encode.sources["image"] = f"encode_{index}", picture
        encodes.append(encode)
        combine.sources[f"embeds_{index}"] = Made(node.id, encode.key, 0)
    notes = [f"the {len(pictures)} pictures of its ImageBatch are encoded one by one and combined by Combine Embeds "
             f"({method}), as the port combined the batch; ImageBatch resized the later pictures to the first's size, "
             "here each is encoded as it is", *_combine_notes(method, len(pictures))]  # fmt: skip
    return [*encodes, combine], Made(node.id, "combine", 0), notes


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


def _simple_weight_type(node: PortNode) -> str:
    weight_type = SIMPLE_WEIGHT_TYPES.get(_fixed_value(node, "weight_type"))
    if weight_type is None:
        raise NotConvertible(f"weight_type '{node.values['weight_type']}' is not one of the port's")
    return weight_type


def convert_simple(graph: Graph, node: PortNode) -> Replacement:
    weight_type = _simple_weight_type(node)
    if _is_faceid(graph, node):  # the port encoded faces for a FaceID adapter whatever its node
        return convert_faceid(graph, node)
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
    if _is_faceid(graph, node):  # the port encoded faces for a FaceID adapter whatever its node
        return convert_faceid(graph, node)
    encoding, embeds, notes = _references(graph, node)
    apply = _apply_advanced(node, embeds, weight_type=_fixed_value(node, "weight_type"))
    return Replacement([apply, *encoding], {0: Made(node.id, "apply", 0)}, [*_image_prompt_notes(node), *notes])


def _image_prompt_notes(node: PortNode) -> list[str]:
    notes = [MIDDLE_BLOCK_NOTE, *_unfold_notes(node)]
    if "image_negative" not in node.sources:
        notes.append(NEGATIVE_NOTE)
    return notes


def _unfold_notes(node: PortNode) -> list[str]:
    """A Batch node's: unfold_batch on, and its encode_batch_size dropped (said, with its value)."""
    if node.type not in BATCH_NODES:
        return []
    notes = [f"a Batch node: unfold_batch is on (image i prompts latent i), as {BATCH_NODES[node.type]} + Batch did"]
    if "encode_batch_size" in node.values:
        notes.append(f"its encode_batch_size {node.values['encode_batch_size']} is dropped: Encode here encodes in "
                     "batches of its own size, which changes no number")  # fmt: skip
    return notes


def convert_encoder(graph: Graph, node: PortNode) -> Replacement:
    if "mask" in node.sources:
        raise NotConvertible("its mask over the reference pixels is not in Encode yet")
    encode = _encode(graph, node, image="image")
    _carry(node, encode, "weight")
    embeds = Made(node.id, "encode", 0)
    notes = ["its pos_embed and neg_embed are one embeds output here (the negative travels with the positive)"]
    return Replacement([encode], {0: embeds, 1: embeds}, notes)


def _embeds_root(graph: Graph, source: Source | None) -> Source | None:
    origin = graph.origin(source)
    return None if origin is None else Source(origin.node, 0)


def _blank_negatives_alike(graph: Graph, positive: Source | None, negative: Source) -> bool:
    """Whether the negative is that of an IPAdapter Encoder (a blank picture's encoding) and the positive comes from
    Encoders with the same adapter and encoder, directly or through Combine Embeds: every negative is then the same,
    so the one the embeds carry here (combined, for Combine Embeds) equals the port's neg_embed."""
    def encoder_inputs(source: Source | None):
        origin = graph.origin(source)
        if origin is None or graph.types.get(origin.node) != "IPAdapterEncoder":
            return None
        return tuple(graph.origin(graph.source(origin.node, name)) for name in ("ipadapter", "clip_vision"))

    blank = encoder_inputs(negative)
    origin = graph.origin(positive)
    if blank is None or origin is None:
        return False
    if graph.types.get(origin.node) == "IPAdapterCombineEmbeds":
        parts = [graph.source(origin.node, f"embed{index}") for index in range(1, 6)]
        parts = [part for part in parts if part is not None]
    else:
        parts = [positive]
    return all(encoder_inputs(part) == blank for part in parts)


def convert_embeds(graph: Graph, node: PortNode) -> Replacement:
    positive = node.sources.get("pos_embed")
    negative = node.sources.get("neg_embed")
    notes = [MIDDLE_BLOCK_NOTE, *_unfold_notes(node)]
    if negative is not None and _embeds_root(graph, negative) != _embeds_root(graph, positive):
        if not _blank_negatives_alike(graph, positive, negative):
            raise NotConvertible("its neg_embed comes from another node than its pos_embed; here embeds carry their "
                                 "own negative")  # fmt: skip
        notes.append(f"its neg_embed (#{negative.node}) is the blank picture's encoding that every Encoder of its "
                     "pos_embed makes; the embeds carry it here")  # fmt: skip
    apply = _apply_advanced(node, positive, weight_type=_fixed_value(node, "weight_type"))
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
    return Replacement([combine], {0: Made(node.id, "combine", 0)}, [*notes, *_combine_notes(method, len(linked))])


def _combine_notes(method: str, count: int) -> list[str]:
    """Where Combine Embeds computes otherwise than the port's combination of `count` embeds."""
    notes = []
    if method == "subtract" and count > 2:
        notes.append("subtract takes the later inputs from the first one by one here; the port took their mean "
                     f"({WHAT_DIFFERS})")  # fmt: skip
    if method == "norm average":
        notes.append("norm average makes each input unit-length here; the port divided by the norm across the inputs "
                     f"({WHAT_DIFFERS})")  # fmt: skip
    return notes


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


# --- FaceID ------------------------------------------------------------------------------------------------------


def _adapter_origin(graph: Graph, node: PortNode) -> tuple[str | None, dict]:
    """(type, widget values) of the node the port node's ipadapter comes from."""
    origin = graph.origin(node.sources.get("ipadapter"))
    if origin is None:
        return None, {}
    return graph.types.get(origin.node), graph.values(origin.node)


def _is_faceid(graph: Graph, node: PortNode) -> bool:
    """Whether the port node applies a FaceID adapter (it then encodes faces): an InsightFace input, its ipadapter
    from the FaceID Unified Loader or a Model Loader of a faceid file; a FaceID node whose adapter is not found."""
    if "insightface" in node.sources:
        return True
    loader_type, values = _adapter_origin(graph, node)
    if loader_type == "IPAdapterUnifiedLoaderFaceID":
        return True
    if isinstance(values.get("ipadapter_file"), str):
        return "faceid" in values["ipadapter_file"].lower()
    return node.type in FACEID_APPLY_NODES and loader_type not in UNIFIED_LOADERS


def _faceid_loras(graph: Graph, node: PortNode) -> list[tuple[str, float]]:
    """(id, strength_model) of the core LoRA loaders of a FaceID LoRA file on the way of the node's model."""
    found, seen = [], set()
    source = graph.origin(node.sources.get("model"))
    while source is not None and source.node not in seen:
        seen.add(source.node)
        values = graph.values(source.node)
        name = values.get("lora_name")
        if graph.types.get(source.node) in LORA_LOADERS and isinstance(name, str) and FACEID_LORA_FILE.search(name):
            found.append((source.node, _widget_value(graph, source.node, "strength_model")))
        source = graph.origin(graph.source(source.node, "model"))
    return found


def _widget_value(graph: Graph, node_id: str, name: str):
    """Another node's widget whose value the mapping takes: it must not come from a link."""
    if graph.source(node_id, name) is not None or name not in graph.values(node_id):
        raise NotConvertible(f"the {name} of #{node_id} comes from a link, and the mapping takes its value")
    return graph.values(node_id)[name]


def _lora_strength(graph: Graph, node: PortNode) -> tuple[float, list[str]]:
    """Apply's lora_strength for a FaceID image prompt: what the port put on the model, through its FaceID Unified
    Loader's lora_strength or a core LoRA loader of the separate FaceID LoRA file (those add up); 0 without."""
    strengths, notes = [], []
    loader_type, values = _adapter_origin(graph, node)
    if loader_type == "IPAdapterUnifiedLoaderFaceID" and not str(values.get("preset")).startswith("FACEID PORTRAIT"):
        strengths.append(_widget_value(graph, graph.origin(node.sources["ipadapter"]).node, "lora_strength"))
        notes.append(f"the port's FaceID Unified Loader put the FaceID LoRA on the model at {values['lora_strength']}; "
                     "here Apply puts the adapter file's own LoRA on at lora_strength")  # fmt: skip
    for lora_id, strength in _faceid_loras(graph, node):
        strengths.append(strength)
        notes.append(f"the FaceID LoRA of #{lora_id} (strength {strength}) is Apply's lora_strength here, from the "
                     "adapter file; that LoRA node is left out")  # fmt: skip
    if not strengths:
        notes.append("the port put no FaceID LoRA on the model here, so lora_strength is 0 (the file's LoRA off)")
    return sum(strengths), notes


def _insightface(graph: Graph, node: PortNode) -> Source | Made:
    if "insightface" in node.sources:
        return node.sources["insightface"]
    adapter = graph.origin(node.sources.get("ipadapter"))
    if adapter is not None and graph.types.get(adapter.node) == "IPAdapterUnifiedLoaderFaceID":
        return Made(adapter.node, "loader", 2)
    raise NotConvertible("it has no insightface input and its ipadapter does not come from the FaceID Unified Loader")


def _encode_face(graph: Graph, node: PortNode) -> NewNode:
    """IPAdapter Encode Face for a port node that encoded the faces of its `image` itself."""
    if "image_negative" in node.sources:
        raise NotConvertible("its image_negative: IPAdapter Encode Face takes no negative picture here")
    encode = NewNode("encode", ENCODE_FACE, {"skip_images_without_face": False})
    encode.sources["ipadapter"] = node.sources.get("ipadapter")
    encode.sources["insightface"] = _insightface(graph, node)
    encode.sources["image"] = node.sources.get("image")
    adapter = graph.origin(node.sources.get("ipadapter"))
    if "clip_vision" in node.sources:
        encode.sources["clip_vision"] = node.sources["clip_vision"]
    elif adapter is not None and graph.types.get(adapter.node) == "IPAdapterUnifiedLoaderFaceID":
        encode.sources["clip_vision"] = Made(adapter.node, "loader", 1)
    return encode


def _faceid_apply(graph: Graph, node: PortNode, apply: NewNode) -> list[str]:
    """Apply's FaceID widgets from the port node: weight_faceidv2 (a node without it: the port's 2 × weight) and the
    LoRA's strength; the report's lines."""
    apply.values["lora_strength"], notes = _lora_strength(graph, node)
    if "weight_faceidv2" in node.values:
        _carry(node, apply, "weight_faceidv2", "faceid_v2_weight")
    else:
        apply.values["faceid_v2_weight"] = 2 * _fixed_value(node, "weight")
        notes.append(f"faceid_v2_weight is 2 × weight ({_number(apply.values['faceid_v2_weight'])}), what the port "
                     "gave a PlusV2 file on a node without weight_faceidv2")  # fmt: skip
    v2 = apply.values.get("faceid_v2_weight", 0.0)
    if v2 < 0:
        raise NotConvertible(f"its weight_faceidv2 {v2} is negative; faceid_v2_weight here is 0 or more")
    return notes


def convert_faceid(graph: Graph, node: PortNode) -> Replacement:
    """The port's FaceID nodes and Mad Scientist, and its IPAdapter and Advanced nodes given a FaceID adapter: faces
    encoded for a FaceID adapter, else pictures (the port's FaceID node with another adapter is its Advanced node)."""
    weight_type = _simple_weight_type(node) if node.type == "IPAdapter" else _fixed_value(node, "weight_type")
    faceid = _is_faceid(graph, node)
    if faceid:
        _check_combine(graph, node, "image")
        encoding, embeds, combined = [_encode_face(graph, node)], Made(node.id, "encode", 0), []
    else:
        encoding, embeds, combined = _references(graph, node)
    layer_weights = _fixed_value(node, "layer_weights") if "layer_weights" in node.values else ""
    if layer_weights.strip() and weight_type not in ("style transfer precise", "composition precise"):
        weight_type = "linear"  # the port's layer_weights replace any other type's map and routing
    apply = _apply_advanced(node, embeds, weight_type=weight_type)
    apply.values["block_weights"] = layer_weights
    notes = [*_image_prompt_notes(node), *combined] if not faceid else [MIDDLE_BLOCK_NOTE, *_unfold_notes(node)]
    if layer_weights.strip():
        notes.append("layer_weights is block_weights here (the same 'index:weight' items, times weight); the port "
                     "never patched the middle block (SD1.5 6, SDXL 4): a weight given to it acts here")  # fmt: skip
    left_out = []
    if faceid:
        notes += _faceid_apply(graph, node, apply)
        left_out = [lora_id for lora_id, _ in _faceid_loras(graph, node)]
    elif "weight_faceidv2" in node.values:
        notes.append("its weight_faceidv2 is dropped: the adapter is not a FaceID one")
    outputs = {0: Made(node.id, "apply", 0)}
    if faceid:
        outputs[1] = Made(node.id, "encode", 1)  # face_image: the aligned face crops, as the port's
    return Replacement([apply, *encoding], outputs, notes, left_out)


def convert_unified_loader_faceid(graph: Graph, node: PortNode) -> Replacement:
    preset = _fixed_value(node, "preset")
    if preset not in FACEID_PRESETS:
        raise NotConvertible(f"preset '{preset}' is not one of the port's FaceID presets")
    ours, bases = FACEID_PRESETS[preset]
    base, why = _base_of(graph, node)
    if base not in bases:
        raise NotConvertible(f"preset '{preset}' has no {base} file ({why})")
    provider, notes = _provider(node)
    loader = NewNode("loader", UNIFIED_LOADER_FACEID, {"preset": ours, "base": base, "provider": provider})
    notes.insert(0, f"preset '{preset}' became '{ours}' for {base}: {why}; pick the other base if that is wrong")
    if not preset.startswith("FACEID PORTRAIT"):
        notes.append(f"its lora_strength {node.values['lora_strength']} is the lora_strength of the Apply nodes that "
                     "use it")  # fmt: skip
    if "ipadapter" in node.sources:
        notes.append("its ipadapter input (loaders chained) is dropped: each loader here loads its own files")
    return Replacement([loader], {0: node.sources.get("model"), 1: Made(node.id, "loader", 0)}, notes)


def _provider(node: PortNode) -> tuple[str, list[str]]:
    """The onnxruntime provider this pack names the port's provider, and the report's line for one but CPU."""
    provider = PROVIDERS.get(_fixed_value(node, "provider"), "CPU")
    if provider == "CPU":
        return provider, []
    return provider, [f"provider '{provider}': if your onnxruntime does not offer it, pick one that it does"]


def convert_insightface_loader(graph: Graph, node: PortNode) -> Replacement:
    provider, notes = _provider(node)
    loader = NewNode("loader", INSIGHTFACE_LOADER, {"provider": provider})
    _carry(node, loader, "model_name")
    return Replacement([loader], {0: Made(node.id, "loader", 0)}, notes)


def _left_out_lora(graph: Graph, lora_id: str) -> Replacement:
    """A core LoRA loader of the FaceID LoRA that Apply's lora_strength replaces: its MODEL and CLIP consumers read
    its own inputs."""
    strength = _widget_value(graph, lora_id, "strength_model")
    outputs = {0: graph.source(lora_id, "model"), 1: graph.source(lora_id, "clip")}
    return Replacement([], outputs, [f"a FaceID LoRA (strength {strength}): left out, Apply's lora_strength is it"])


# --- style and composition, precise, the Community loader -------------------------------------------------------


def convert_style_composition(graph: Graph, node: PortNode) -> Replacement:
    for image in ("image_style", "image_composition"):
        _check_combine(graph, node, image)
    style = _encode(graph, node, image="image_style", negative="image_negative")
    composition = _encode(graph, node, image="image_composition")
    composition.key = "composition"
    weight_type = "strong style and composition" if _fixed_value(node, "expand_style") else "style and composition"
    apply = _apply_advanced(node, Made(node.id, "encode", 0), weight_type=weight_type, weight="weight_style")
    apply.sources["composition_embeds"] = Made(node.id, "composition", 0)
    _carry(node, apply, "weight_composition", "composition_weight")
    notes = [MIDDLE_BLOCK_NOTE, *_unfold_notes(node)]
    if "image_negative" not in node.sources:
        notes.append(NEGATIVE_NOTE)
    base, why = _base_of(graph, node)
    if base == "SD1.5":
        notes.append(f"the port ran it on SDXL only ({why}); on SD1.5 the composition image goes to modules 4 and 5 "
                     f"here ({WHAT_DIFFERS})")  # fmt: skip
    return Replacement([apply, style, composition], {0: Made(node.id, "apply", 0)}, notes)


def _number(value) -> str:
    return f"{value:.10g}"


def precise_block_factors(weight_type: str, base: str, boost_ratio: float) -> dict[int, float]:
    """The port's map of a precise type as block_weights factors of the weight, its boost being `boost_ratio` times
    the weight (its style_boost weights the composition modules, its composition_boost the style ones); the middle
    block (SD1.5 6, SDXL 4) is left out, as the port never reached it."""
    sd15_style = (0, 1, 2, 3, *range(9, 16))
    if weight_type == "style transfer precise":
        if base == "SDXL":
            return {3: boost_ratio, 6: 1.0}
        return {**dict.fromkeys(sd15_style, 1.0), 4: 0.25 * boost_ratio, 5: boost_ratio}
    if base == "SDXL":
        return {**dict.fromkeys((0, 1, 2, 5, 7, 8, 9, 10), 0.1 * boost_ratio), 3: 1.0, 6: boost_ratio}
    return {**dict.fromkeys(sd15_style, boost_ratio), 4: 0.25, 5: 1.0, 7: 0.1 * boost_ratio, 8: 0.1 * boost_ratio}


def _precise(graph: Graph, node: PortNode, *, weight_type: str, boost: str) -> Replacement:
    encoding, embeds, combined = _references(graph, node)
    apply = _apply_advanced(node, embeds, weight_type=weight_type)
    notes = [*_image_prompt_notes(node), *combined]
    boost_value = _fixed_value(node, boost)
    weight = _fixed_value(node, "weight")  # the boost acts apart from the weight: both must be known
    if boost_value != weight:
        if weight == 0:
            raise NotConvertible(f"its {boost} {boost_value} acts where its weight is 0 (block_weights scale it)")
        base, why = _base_of(graph, node)
        factors = precise_block_factors(weight_type, base, boost_value / weight)
        apply.values["block_weights"] = ", ".join(f"{index}:{_number(factors[index])}" for index in sorted(factors))
        notes.append(f"its {boost} {_number(boost_value)} (not the weight {_number(weight)}) is in block_weights, as "
                     f"the port's {base} map ({why}; with the other base, rewrite block_weights)")  # fmt: skip
    return Replacement([apply, *encoding], {0: Made(node.id, "apply", 0)}, notes)


def convert_precise_style(graph: Graph, node: PortNode) -> Replacement:
    return _precise(graph, node, weight_type="style transfer precise", boost="style_boost")


def convert_precise_composition(graph: Graph, node: PortNode) -> Replacement:
    return _precise(graph, node, weight_type="composition precise", boost="composition_boost")


def convert_unified_loader_community(graph: Graph, node: PortNode) -> Replacement:
    preset = _fixed_value(node, "preset")
    if preset != "Composition":
        raise NotConvertible(f"preset '{preset}': Kolors is not a model family of this pack")
    base, why = _base_of(graph, node)
    loader = NewNode("loader", UNIFIED_LOADER, {"preset": COMMUNITY_PRESETS[base]})
    notes = [f"preset 'Composition' became '{COMMUNITY_PRESETS[base]}': {why}; pick the other base's if wrong"]
    return Replacement([loader], {0: node.sources.get("model"), 1: Made(node.id, "loader", 0)}, notes)


# --- the encoder enhancer, tiles, embeds files ------------------------------------------------------------------


def convert_enhancer(graph: Graph, node: PortNode) -> Replacement:
    tiles = node.values["enhance_tiles"]
    if node.values.get("combine_embeds", "concat") != "concat" and ("enhance_tiles" in node.sources or tiles > 1):
        raise NotConvertible(f"combine_embeds '{node.values['combine_embeds']}' over the port's two encodings of one "
                             "picture (whole and tiled): Encode here keeps them as one prompt (concat)")  # fmt: skip
    encoding, embeds, combined = _references(graph, node)
    for encode in (new for new in encoding if new.type == ENCODE):
        for name in ("enhance_tiles", "enhance_ratio"):
            _carry(node, encode, name)
    apply = _apply_advanced(node, embeds, weight_type=_fixed_value(node, "weight_type"))
    return Replacement([apply, *encoding], {0: Made(node.id, "apply", 0)}, [*_image_prompt_notes(node), *combined])


def convert_tiled(graph: Graph, node: PortNode) -> Replacement:
    _check_combine(graph, node, "image")
    tiles = NewNode("tiles", TILES, sources={"image": node.sources.get("image")})
    _carry(node, tiles, "sharpening")
    if "attn_mask" in node.sources:
        tiles.sources["attn_mask"] = node.sources["attn_mask"]
    encode = _encode(graph, node, image="image", negative="image_negative")
    encode.sources["image"] = Made(node.id, "tiles", 0)
    apply = _apply_advanced(node, Made(node.id, "encode", 0), weight_type=_fixed_value(node, "weight_type"))
    apply.sources["attn_mask"] = Made(node.id, "tiles", 1)
    outputs = {0: Made(node.id, "apply", 0), 1: Made(node.id, "tiles", 0), 2: Made(node.id, "tiles", 1)}
    notes = _image_prompt_notes(node)
    notes.append("IPAdapter Tiles cuts the tiles and their masks; each tile acts in its own part of the picture")
    return Replacement([apply, tiles, encode], outputs, notes)


def _consumer_clip_vision(graph: Graph, output: Source) -> Source | Made | None:
    """The image encoder of the first port node that reads `output` (through reroutes and the port's Combine
    Embeds) and has one."""
    pending, seen = [output], set()
    while pending:
        current = pending.pop(0)
        for consumer_id in graph.consumers(current):
            if consumer_id in seen:
                continue
            seen.add(consumer_id)
            consumer_type = graph.types.get(consumer_id)
            if consumer_type in (REROUTE, "IPAdapterCombineEmbeds"):
                pending.append(Source(consumer_id, 0))
            elif consumer_type in PORT_NODES and "clip_vision" in dict(PORT_NODES[consumer_type].sockets):
                try:
                    return _clip_vision(graph, graph.port_node(consumer_id))
                except NotConvertible:
                    continue
    return None


def convert_load_embeds(graph: Graph, node: PortNode) -> Replacement:
    load = NewNode("load", LOAD_EMBEDS)
    _carry(node, load, "embeds", "embeds_file")
    clip_vision = _consumer_clip_vision(graph, Source(node.id, 0))
    notes = ["the .ipadpt file is read safely (tensors only) as the positive; its negative is the reference's (zeros, "
             "or for hidden states the encoder's output on zero pixels)"]  # fmt: skip
    if clip_vision is not None:
        load.sources["clip_vision"] = clip_vision
    else:
        notes.append("no image encoder found for it: a file of hidden states (plus adapters) needs clip_vision")
    return Replacement([load], {0: Made(node.id, "load", 0)}, notes)


# --- per-frame weights, regional bundles ---------------------------------------------------------------------


def _same_inputs(graph: Graph, node: PortNode, our_type: str, notes=()) -> Replacement:
    """Our counterpart with the same inputs (by name, linked or not) and outputs in the same order."""
    new = NewNode("node", our_type)
    shape = OUR_NODES[our_type]
    for name, _ in shape.sockets:
        if name in node.sources:
            new.sources[name] = node.sources[name]
    for name, _ in PORT_NODES[node.type].widgets:
        _carry(node, new, name)
    outputs = {slot: Made(node.id, "node", slot) for slot in range(len(shape.outputs))}
    return Replacement([new], outputs, list(notes))


def convert_weights(graph: Graph, node: PortNode) -> Replacement:
    notes = []
    if "timing" in node.sources or node.values["timing"] == "random":
        notes.append("timing 'random' is drawn from seed (0) here, the same each run; the port drew anew each run")
    return _same_inputs(graph, node, WEIGHTS, notes)


def convert_weights_from_strategy(graph: Graph, node: PortNode) -> Replacement:
    return _same_inputs(graph, node, WEIGHTS_FROM_STRATEGY)


def convert_prompt_schedule(graph: Graph, node: PortNode) -> Replacement:
    return _same_inputs(graph, node, PROMPT_SCHEDULE)


def convert_combine_weights(graph: Graph, node: PortNode) -> Replacement:
    return _same_inputs(graph, node, COMBINE_WEIGHTS)


def convert_regional(graph: Graph, node: PortNode) -> Replacement:
    return _same_inputs(graph, node, REGIONAL)


def convert_combine_params(graph: Graph, node: PortNode) -> Replacement:
    return _same_inputs(graph, node, COMBINE_PARAMS)


def convert_from_params(graph: Graph, node: PortNode) -> Replacement:
    replacement = _same_inputs(graph, node, FROM_PARAMS, [MIDDLE_BLOCK_NOTE])
    apply = replacement.nodes[0]
    apply.sources["clip_vision"] = _clip_vision(graph, node)
    apply.values["crop"] = "center"
    if "image_negative" not in node.sources:
        replacement.notes.append(NEGATIVE_NOTE)
    return replacement


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
    "IPAdapterUnifiedLoaderFaceID": convert_unified_loader_faceid,
    "IPAdapterInsightFaceLoader": convert_insightface_loader,
    "IPAdapterFaceID": convert_faceid,
    "IPAAdapterFaceIDBatch": convert_faceid,
    "IPAdapterUnifiedLoaderCommunity": convert_unified_loader_community,
    "IPAdapterBatch": convert_advanced,
    "IPAdapterEmbedsBatch": convert_embeds,
    "IPAdapterStyleComposition": convert_style_composition,
    "IPAdapterStyleCompositionBatch": convert_style_composition,
    "IPAdapterPreciseStyleTransfer": convert_precise_style,
    "IPAdapterPreciseStyleTransferBatch": convert_precise_style,
    "IPAdapterPreciseComposition": convert_precise_composition,
    "IPAdapterPreciseCompositionBatch": convert_precise_composition,
    "IPAdapterMS": convert_faceid,
    "IPAdapterClipVisionEnhancer": convert_enhancer,
    "IPAdapterClipVisionEnhancerBatch": convert_enhancer,
    "IPAdapterTiled": convert_tiled,
    "IPAdapterLoadEmbeds": convert_load_embeds,
    "IPAdapterWeights": convert_weights,
    "IPAdapterWeightsFromStrategy": convert_weights_from_strategy,
    "IPAdapterPromptScheduleFromWeightsStrategy": convert_prompt_schedule,
    "IPAdapterCombineWeights": convert_combine_weights,
    "IPAdapterRegionalConditioning": convert_regional,
    "IPAdapterCombineParams": convert_combine_params,
    "IPAdapterFromParams": convert_from_params,
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
    for lora_id in {lora_id for replacement in list(done.values()) for lora_id in replacement.left_out}:
        done[lora_id] = _left_out_lora(graph, lora_id)
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
