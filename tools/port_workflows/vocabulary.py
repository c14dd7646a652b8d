"""The two node vocabularies of a workflow conversion: ComfyUI_IPAdapter_plus's nodes ("the port", as its saved
workflows hold them) and this pack's, with the port's options and what they become here.

Pure data: no ComfyUI, no torch. The table of this pack's nodes is checked against the nodes themselves by
tests/test_convert_workflow.py (through the pinned schema, tests/golden/node_schema.json), so it cannot drift from
them.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeShape:
    """What a workflow stores of a node type: its linked inputs, its widgets in the front-end's order (with the
    value a workflow saved before the widget existed gets), and its outputs."""

    sockets: tuple[tuple[str, str], ...]  # (name, type), in the node's input order
    widgets: tuple[tuple[str, object], ...]  # (name, default)
    outputs: tuple[tuple[str, str], ...]  # (name, type)
    # widgets followed, in the editor format only, by their control_after_generate value ("fixed", "randomize", ...)
    controlled: tuple[str, ...] = ()

    def widget_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.widgets)


START_END = (("start_at", 0.0), ("end_at", 1.0))
FACEID_WIDGETS = (("faceid_v2_weight", 1.0), ("lora_strength", 1.0))  # Apply's: PlusV2's s and the file's LoRA
EMBEDS_SCALING = ("embeds_scaling", "V only")

# The port's nodes that the converter reads: their INPUT_TYPES at its last release (9d076a3), widgets in order.
# Older saves of a node miss its newer trailing widgets; those read as the default given here, as they did when
# the port loaded them.
PORT_NODES = {
    "IPAdapterModelLoader": NodeShape((), (("ipadapter_file", None),), (("IPADAPTER", "IPADAPTER"),)),
    "IPAdapterUnifiedLoader": NodeShape(
        (("model", "MODEL"), ("ipadapter", "IPADAPTER")),
        (("preset", "STANDARD (medium strength)"),),
        (("model", "MODEL"), ("ipadapter", "IPADAPTER")),
    ),
    "IPAdapter": NodeShape(
        (("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("attn_mask", "MASK")),
        (("weight", 1.0), *START_END, ("weight_type", "standard")),
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterAdvanced": NodeShape(
        (
            ("model", "MODEL"),
            ("ipadapter", "IPADAPTER"),
            ("image", "IMAGE"),
            ("image_negative", "IMAGE"),
            ("attn_mask", "MASK"),
            ("clip_vision", "CLIP_VISION"),
        ),
        (("weight", 1.0), ("weight_type", "linear"), ("combine_embeds", "concat"), *START_END, EMBEDS_SCALING),
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterEncoder": NodeShape(
        (("ipadapter", "IPADAPTER"), ("image", "IMAGE"), ("mask", "MASK"), ("clip_vision", "CLIP_VISION")),
        (("weight", 1.0),),
        (("pos_embed", "EMBEDS"), ("neg_embed", "EMBEDS")),
    ),
    "IPAdapterEmbeds": NodeShape(
        (
            ("model", "MODEL"),
            ("ipadapter", "IPADAPTER"),
            ("pos_embed", "EMBEDS"),
            ("neg_embed", "EMBEDS"),
            ("attn_mask", "MASK"),
            ("clip_vision", "CLIP_VISION"),
        ),
        (("weight", 1.0), ("weight_type", "linear"), *START_END, EMBEDS_SCALING),
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterCombineEmbeds": NodeShape(
        tuple((f"embed{index}", "EMBEDS") for index in range(1, 6)),
        (("method", "concat"),),
        (("EMBEDS", "EMBEDS"),),
    ),
    "IPAdapterSaveEmbeds": NodeShape((("embeds", "EMBEDS"),), (("filename_prefix", "IP_embeds"),), ()),
    "IPAdapterNoise": NodeShape(
        (("image_optional", "IMAGE"),),
        (("type", "fade"), ("strength", 1.0), ("blur", 0)),
        (("IMAGE", "IMAGE"),),
    ),
    "PrepImageForClipVision": NodeShape(
        (("image", "IMAGE"),),
        (("interpolation", "LANCZOS"), ("crop_position", "top"), ("sharpening", 0.0)),
        (("IMAGE", "IMAGE"),),
    ),
}

# The port's nodes with no counterpart here yet, and why: the converter names them and stops (exit 2).
PORT_NODES_NOT_YET = {
    **dict.fromkeys(
        ("IPAdapterFaceID", "IPAAdapterFaceIDBatch", "IPAdapterUnifiedLoaderFaceID", "IPAdapterInsightFaceLoader"),
        "FaceID nodes are not converted yet",
    ),
    **dict.fromkeys(
        (
            "IPAdapterBatch",
            "IPAdapterEmbedsBatch",
            "IPAdapterStyleCompositionBatch",
            "IPAdapterPreciseStyleTransferBatch",
            "IPAdapterPreciseCompositionBatch",
            "IPAdapterClipVisionEnhancerBatch",
        ),
        "one reference per latent (unfold batch) is not in this pack yet",
    ),
    **dict.fromkeys(
        ("IPAdapterWeights", "IPAdapterWeightsFromStrategy", "IPAdapterPromptScheduleFromWeightsStrategy",
         "IPAdapterCombineWeights"),  # fmt: skip
        "per-frame weight strategies are not in this pack yet",
    ),
    **dict.fromkeys(("IPAdapterTiled", "IPAdapterTiledBatch"), "tiled references are not in this pack yet"),
    "IPAdapterClipVisionEnhancer": "the encoder enhancer is not in this pack yet",
    **dict.fromkeys(
        ("IPAdapterRegionalConditioning", "IPAdapterCombineParams", "IPAdapterFromParams"),
        "regional bundles are not in this pack yet",
    ),
    **dict.fromkeys(
        ("IPAdapterStyleComposition", "IPAdapterPreciseStyleTransfer", "IPAdapterPreciseComposition", "IPAdapterMS"),
        "its mapping onto Apply IPAdapter (advanced) is not written yet",
    ),
    "IPAdapterLoadEmbeds": "the port's .ipadpt embeds files are not read yet",
    "IPAdapterUnifiedLoaderCommunity": "the community presets (Composition, Kolors) are not in this pack",
    "IPAdapterFaceIDKolors": "Kolors is not a model family of this pack",
}

EMBEDS = "DECOUPLED_IPADAPTER_EMBEDS"
IPADAPTER = "DECOUPLED_IPADAPTER"
LOADER = "DecoupledIPAdapterLoader"
UNIFIED_LOADER = "DecoupledIPAdapterUnifiedLoader"
ENCODE = "DecoupledIPAdapterEncode"
APPLY = "DecoupledIPAdapterApply"
APPLY_ADVANCED = "DecoupledIPAdapterApplyAdvanced"
COMBINE = "DecoupledIPAdapterCombineEmbeds"
SAVE_EMBEDS = "DecoupledIPAdapterSaveEmbeds"
NOISE = "DecoupledIPAdapterNoise"
PREP_IMAGE = "DecoupledIPAdapterPrepImage"

# This pack's nodes that conversions make (the pinned schema, tests/golden/node_schema.json, is the truth).
OUR_NODES = {
    LOADER: NodeShape((), (("ipadapter_name", None),), (("ipadapter", IPADAPTER),)),
    UNIFIED_LOADER: NodeShape((), (("preset", None),), (("ipadapter", IPADAPTER), ("clip_vision", "CLIP_VISION"))),
    ENCODE: NodeShape(
        (("ipadapter", IPADAPTER), ("clip_vision", "CLIP_VISION"), ("image", "IMAGE"), ("negative_image", "IMAGE")),
        (("crop", "center"),),
        (("embeds", EMBEDS),),
    ),
    APPLY: NodeShape(
        (("model", "MODEL"), ("ipadapter", IPADAPTER), ("embeds", EMBEDS), ("attn_mask", "MASK")),
        (("weight", 1.0), *START_END, *FACEID_WIDGETS),
        (("MODEL", "MODEL"),),
    ),
    APPLY_ADVANCED: NodeShape(
        (
            ("model", "MODEL"),
            ("ipadapter", IPADAPTER),
            ("embeds", EMBEDS),
            ("attn_mask", "MASK"),
            ("composition_embeds", EMBEDS),
        ),
        (("weight", 1.0), *START_END, ("weight_type", "linear"), EMBEDS_SCALING, ("block_weights", ""),
         ("composition_weight", 1.0), *FACEID_WIDGETS),  # fmt: skip
        (("MODEL", "MODEL"),),
    ),
    COMBINE: NodeShape(
        tuple((f"embeds_{index}", EMBEDS) for index in range(1, 6)),
        (("method", "concat"),),
        (("embeds", EMBEDS),),
    ),
    NOISE: NodeShape(
        (("image", "IMAGE"),),
        (("type", "fade"), ("strength", 1.0), ("blur", 0), ("seed", 0)),
        (("IMAGE", "IMAGE"),),
        controlled=("seed",),
    ),
    PREP_IMAGE: NodeShape(
        (("image", "IMAGE"),),
        (("interpolation", "LANCZOS"), ("crop_position", "center"), ("sharpening", 0.0), ("size", 224)),
        (("IMAGE", "IMAGE"),),
    ),
    SAVE_EMBEDS: NodeShape((("embeds", EMBEDS),), (("filename_prefix", "ipadapter_embeds/embeds"),), ()),
}

# The port's Unified Loader presets, by base model: this pack's preset of the same file and encoder.
UNIFIED_PRESETS = {
    "SD1.5": {
        "LIGHT - SD1.5 only (low strength)": "SD1.5 light",
        "STANDARD (medium strength)": "SD1.5 standard",
        "VIT-G (medium strength)": "SD1.5 ViT-G",
        "PLUS (high strength)": "SD1.5 plus",
        "PLUS FACE (portraits)": "SD1.5 plus-face",
        "FULL FACE - SD1.5 only (portraits stronger)": "SD1.5 full-face",
    },
    "SDXL": {
        "STANDARD (medium strength)": "SDXL ViT-H",
        "VIT-G (medium strength)": "SDXL standard (ViT-bigG)",
        "PLUS (high strength)": "SDXL plus ViT-H",
        "PLUS FACE (portraits)": "SDXL plus-face ViT-H",
    },
}

# IPAdapter (the port's simple node) maps its three weight types onto these, as the port does when it runs.
SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
# The port's combine_embeds over a batch of reference images: only concat is what this pack's Encode does.
COMBINE_METHODS = ("concat", "add", "subtract", "average", "norm average")
