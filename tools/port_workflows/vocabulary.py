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
# Apply's last widgets: PlusV2's s, the FaceID file's LoRA, one reference per latent
APPLY_TAIL_WIDGETS = (("faceid_v2_weight", 1.0), ("lora_strength", 1.0), ("unfold_batch", False))
EMBEDS_SCALING = ("embeds_scaling", "V only")
ENCODE_BATCH_SIZE = ("encode_batch_size", 0)
IMAGE_PROMPT_SOCKETS = (
    ("model", "MODEL"),
    ("ipadapter", "IPADAPTER"),
    ("image", "IMAGE"),
    ("image_negative", "IMAGE"),
    ("attn_mask", "MASK"),
    ("clip_vision", "CLIP_VISION"),
)
STYLE_COMPOSITION_SOCKETS = (
    *IMAGE_PROMPT_SOCKETS[:2],
    ("image_style", "IMAGE"),
    ("image_composition", "IMAGE"),
    *IMAGE_PROMPT_SOCKETS[3:],
)
STYLE_COMPOSITION_WEIGHTS = (("weight_style", 1.0), ("weight_composition", 1.0), ("expand_style", False))
WEIGHTS_OUTPUTS = (
    ("weights", "FLOAT"),
    ("weights_invert", "FLOAT"),
    ("total_frames", "INT"),
    ("image_1", "IMAGE"),
    ("image_2", "IMAGE"),
    ("weights_strategy", "WEIGHTS_STRATEGY"),
)
WEIGHTS_WIDGETS = (
    ("weights", "1.0, 0.0"),
    ("timing", "linear"),
    ("frames", 0),
    ("start_frame", 0),
    ("end_frame", 9999),
    ("add_starting_frames", 0),
    ("add_ending_frames", 0),
    ("method", "full batch"),
)

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
        IMAGE_PROMPT_SOCKETS,
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
    "IPAdapterUnifiedLoaderFaceID": NodeShape(
        (("model", "MODEL"), ("ipadapter", "IPADAPTER")),
        (("preset", "FACEID"), ("lora_strength", 0.6), ("provider", "CPU")),
        (("MODEL", "MODEL"), ("ipadapter", "IPADAPTER")),
    ),
    "IPAdapterUnifiedLoaderCommunity": NodeShape(
        (("model", "MODEL"), ("ipadapter", "IPADAPTER")),
        (("preset", "Composition"),),
        (("model", "MODEL"), ("ipadapter", "IPADAPTER")),
    ),
    "IPAdapterInsightFaceLoader": NodeShape(
        (), (("provider", "CPU"), ("model_name", "buffalo_l")), (("INSIGHTFACE", "INSIGHTFACE"),)
    ),
    "IPAdapterFaceID": NodeShape(
        (*IMAGE_PROMPT_SOCKETS, ("insightface", "INSIGHTFACE")),
        (("weight", 1.0), ("weight_faceidv2", 1.0), ("weight_type", "linear"), ("combine_embeds", "concat"),
         *START_END, EMBEDS_SCALING),  # fmt: skip
        (("MODEL", "MODEL"), ("face_image", "IMAGE")),
    ),
    "IPAdapterBatch": NodeShape(
        IMAGE_PROMPT_SOCKETS,
        (("weight", 1.0), ("weight_type", "linear"), *START_END, EMBEDS_SCALING, ENCODE_BATCH_SIZE),
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterStyleComposition": NodeShape(
        STYLE_COMPOSITION_SOCKETS,
        (*STYLE_COMPOSITION_WEIGHTS, ("combine_embeds", "average"), *START_END, EMBEDS_SCALING),
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterStyleCompositionBatch": NodeShape(
        STYLE_COMPOSITION_SOCKETS, (*STYLE_COMPOSITION_WEIGHTS, *START_END, EMBEDS_SCALING), (("MODEL", "MODEL"),)
    ),
    "IPAdapterPreciseStyleTransfer": NodeShape(
        IMAGE_PROMPT_SOCKETS,
        (("weight", 1.0), ("style_boost", 1.0), ("combine_embeds", "concat"), *START_END, EMBEDS_SCALING),
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterPreciseComposition": NodeShape(
        IMAGE_PROMPT_SOCKETS,
        (("weight", 1.0), ("composition_boost", 0.0), ("combine_embeds", "concat"), *START_END, EMBEDS_SCALING),
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterMS": NodeShape(
        (*IMAGE_PROMPT_SOCKETS, ("insightface", "INSIGHTFACE")),
        (("weight", 1.0), ("weight_faceidv2", 1.0), ("weight_type", "linear"), ("combine_embeds", "concat"),
         *START_END, EMBEDS_SCALING, ("layer_weights", "")),  # fmt: skip
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterClipVisionEnhancer": NodeShape(
        IMAGE_PROMPT_SOCKETS,
        (("weight", 1.0), ("weight_type", "linear"), ("combine_embeds", "concat"), *START_END, EMBEDS_SCALING,
         ("enhance_tiles", 2), ("enhance_ratio", 1.0)),  # fmt: skip
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterClipVisionEnhancerBatch": NodeShape(
        IMAGE_PROMPT_SOCKETS,
        (("weight", 1.0), ("weight_type", "linear"), *START_END, EMBEDS_SCALING, ("enhance_tiles", 2),
         ("enhance_ratio", 0.5), ENCODE_BATCH_SIZE),  # fmt: skip
        (("MODEL", "MODEL"),),
    ),
    "IPAdapterTiled": NodeShape(
        IMAGE_PROMPT_SOCKETS,
        (("weight", 1.0), ("weight_type", "linear"), ("combine_embeds", "concat"), *START_END, ("sharpening", 0.0),
         EMBEDS_SCALING),  # fmt: skip
        (("MODEL", "MODEL"), ("tiles", "IMAGE"), ("masks", "MASK")),
    ),
    "IPAdapterLoadEmbeds": NodeShape((), (("embeds", None),), (("EMBEDS", "EMBEDS"),)),
    "IPAdapterWeights": NodeShape((("image", "IMAGE"),), WEIGHTS_WIDGETS, WEIGHTS_OUTPUTS),
    "IPAdapterWeightsFromStrategy": NodeShape(
        (("weights_strategy", "WEIGHTS_STRATEGY"), ("image", "IMAGE")), (), WEIGHTS_OUTPUTS
    ),
    "IPAdapterPromptScheduleFromWeightsStrategy": NodeShape(
        (("weights_strategy", "WEIGHTS_STRATEGY"),), (("prompt", ""),), (("prompt_schedule", "STRING"),)
    ),
    "IPAdapterCombineWeights": NodeShape(
        (), (("weights_1", 0.0), ("weights_2", 0.0)), (("weights", "FLOAT"), ("count", "INT"))
    ),
    "IPAdapterRegionalConditioning": NodeShape(
        (("image", "IMAGE"), ("mask", "MASK"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")),
        (("image_weight", 1.0), ("prompt_weight", 1.0), ("weight_type", "linear"), *START_END),
        (("IPADAPTER_PARAMS", "IPADAPTER_PARAMS"), ("POSITIVE", "CONDITIONING"), ("NEGATIVE", "CONDITIONING")),
    ),
    "IPAdapterCombineParams": NodeShape(
        tuple((f"params_{index}", "IPADAPTER_PARAMS") for index in range(1, 6)),
        (),
        (("IPADAPTER_PARAMS", "IPADAPTER_PARAMS"),),
    ),
    "IPAdapterFromParams": NodeShape(
        (("model", "MODEL"), ("ipadapter", "IPADAPTER"), ("ipadapter_params", "IPADAPTER_PARAMS"),
         ("image_negative", "IMAGE"), ("clip_vision", "CLIP_VISION")),  # fmt: skip
        (("combine_embeds", "concat"), EMBEDS_SCALING),
        (("MODEL", "MODEL"),),
    ),
}
# The Batch variants: the same inputs as (or a subset of) their plain node's, and one reference per latent.
PORT_NODES["IPAAdapterFaceIDBatch"] = PORT_NODES["IPAdapterFaceID"]
PORT_NODES["IPAdapterEmbedsBatch"] = PORT_NODES["IPAdapterEmbeds"]
PORT_NODES["IPAdapterPreciseStyleTransferBatch"] = PORT_NODES["IPAdapterPreciseStyleTransfer"]
PORT_NODES["IPAdapterPreciseCompositionBatch"] = PORT_NODES["IPAdapterPreciseComposition"]
BATCH_NODES = {
    "IPAdapterBatch": "IPAdapterAdvanced",
    "IPAdapterEmbedsBatch": "IPAdapterEmbeds",
    "IPAAdapterFaceIDBatch": "IPAdapterFaceID",
    "IPAdapterStyleCompositionBatch": "IPAdapterStyleComposition",
    "IPAdapterPreciseStyleTransferBatch": "IPAdapterPreciseStyleTransfer",
    "IPAdapterPreciseCompositionBatch": "IPAdapterPreciseComposition",
    "IPAdapterClipVisionEnhancerBatch": "IPAdapterClipVisionEnhancer",
}

# The port's nodes with no counterpart here, and why: the converter names them and stops (exit 2).
PORT_NODES_NOT_YET = {
    "IPAdapterTiledBatch": "its tile t of picture i for latent i has no counterpart: IPAdapter Tiles keeps every "
    "tile of every picture, and Apply's unfold_batch gives latent i the i-th tile",
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
UNIFIED_LOADER_FACEID = "DecoupledIPAdapterUnifiedLoaderFaceID"
INSIGHTFACE_LOADER = "DecoupledIPAdapterInsightFaceLoader"
ENCODE_FACE = "DecoupledIPAdapterEncodeFace"
LOAD_EMBEDS = "DecoupledIPAdapterLoadEmbeds"
TILES = "DecoupledIPAdapterTiles"
WEIGHTS = "DecoupledIPAdapterWeights"
WEIGHTS_FROM_STRATEGY = "DecoupledIPAdapterWeightsFromStrategy"
PROMPT_SCHEDULE = "DecoupledIPAdapterPromptScheduleFromWeightsStrategy"
COMBINE_WEIGHTS = "DecoupledIPAdapterCombineWeights"
REGIONAL = "DecoupledIPAdapterRegionalConditioning"
COMBINE_PARAMS = "DecoupledIPAdapterCombineParams"
FROM_PARAMS = "DecoupledIPAdapterFromParams"
INSIGHTFACE = "DECOUPLED_IPADAPTER_INSIGHTFACE"
PARAMS = "DECOUPLED_IPADAPTER_PARAMS"
OUR_WEIGHTS_OUTPUTS = (*WEIGHTS_OUTPUTS[:-1], ("weights_strategy", "DECOUPLED_IPADAPTER_WEIGHTS_STRATEGY"))

# This pack's nodes that conversions make (the pinned schema, tests/golden/node_schema.json, is the truth).
OUR_NODES = {
    LOADER: NodeShape((), (("ipadapter_name", None),), (("ipadapter", IPADAPTER),)),
    UNIFIED_LOADER: NodeShape((), (("preset", None),), (("ipadapter", IPADAPTER), ("clip_vision", "CLIP_VISION"))),
    ENCODE: NodeShape(
        (("ipadapter", IPADAPTER), ("clip_vision", "CLIP_VISION"), ("image", "IMAGE"), ("negative_image", "IMAGE")),
        (("crop", "center"), ("weight", 1.0), ("enhance_tiles", 1), ("enhance_ratio", 1.0)),
        (("embeds", EMBEDS),),
    ),
    APPLY: NodeShape(
        (("model", "MODEL"), ("ipadapter", IPADAPTER), ("embeds", EMBEDS), ("attn_mask", "MASK")),
        (("weight", 1.0), *START_END, *APPLY_TAIL_WIDGETS),
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
         ("composition_weight", 1.0), *APPLY_TAIL_WIDGETS),  # fmt: skip
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
    UNIFIED_LOADER_FACEID: NodeShape(
        (),
        (("preset", None), ("base", "SD1.5"), ("provider", "CPU")),
        (("ipadapter", IPADAPTER), ("clip_vision", "CLIP_VISION"), ("insightface", INSIGHTFACE)),
    ),
    INSIGHTFACE_LOADER: NodeShape(
        (), (("model_name", "buffalo_l"), ("provider", "CPU")), (("insightface", INSIGHTFACE),)
    ),
    ENCODE_FACE: NodeShape(
        (("ipadapter", IPADAPTER), ("insightface", INSIGHTFACE), ("image", "IMAGE"), ("clip_vision", "CLIP_VISION")),
        (("skip_images_without_face", False),),
        (("embeds", EMBEDS), ("face_image", "IMAGE")),
    ),
    LOAD_EMBEDS: NodeShape((("clip_vision", "CLIP_VISION"),), (("embeds_file", None),), (("embeds", EMBEDS),)),
    TILES: NodeShape(
        (("image", "IMAGE"), ("attn_mask", "MASK")), (("sharpening", 0.0),), (("tiles", "IMAGE"), ("masks", "MASK"))
    ),
    WEIGHTS: NodeShape((("image", "IMAGE"),), (*WEIGHTS_WIDGETS, ("seed", 0)), OUR_WEIGHTS_OUTPUTS),
    WEIGHTS_FROM_STRATEGY: NodeShape(
        (("weights_strategy", OUR_WEIGHTS_OUTPUTS[-1][1]), ("image", "IMAGE")), (), OUR_WEIGHTS_OUTPUTS
    ),
    PROMPT_SCHEDULE: NodeShape(
        (("weights_strategy", OUR_WEIGHTS_OUTPUTS[-1][1]),), (("prompt", ""),), (("prompt_schedule", "STRING"),)
    ),
    COMBINE_WEIGHTS: NodeShape((), (("weights_1", 0.0), ("weights_2", 0.0)), (("weights", "FLOAT"), ("count", "INT"))),
    REGIONAL: NodeShape(
        (("image", "IMAGE"), ("mask", "MASK"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")),
        (("image_weight", 1.0), ("prompt_weight", 1.0), ("weight_type", "linear"), *START_END),
        (("ipadapter_params", PARAMS), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")),
    ),
    COMBINE_PARAMS: NodeShape(
        tuple((f"params_{index}", PARAMS) for index in range(1, 6)), (), (("ipadapter_params", PARAMS),)
    ),
    FROM_PARAMS: NodeShape(
        (("model", "MODEL"), ("ipadapter", IPADAPTER), ("clip_vision", "CLIP_VISION"), ("ipadapter_params", PARAMS),
         ("image_negative", "IMAGE")),  # fmt: skip
        (("combine_embeds", "concat"), EMBEDS_SCALING, ("crop", "center")),
        (("MODEL", "MODEL"),),
    ),
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

# The port's FaceID Unified Loader presets: this pack's FaceID preset, and the bases the port had a file for.
FACEID_PRESETS = {
    "FACEID": ("FaceID", ("SD1.5", "SDXL")),
    "FACEID PLUS - SD1.5 only": ("FaceID Plus", ("SD1.5",)),
    "FACEID PLUS V2": ("FaceID Plus V2", ("SD1.5", "SDXL")),
    "FACEID PORTRAIT (style transfer)": ("FaceID Portrait", ("SD1.5", "SDXL")),
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": ("FaceID Portrait unnorm (SDXL)", ("SDXL",)),
}
# The port's Community loader's Composition preset (ostris's files), by base; its Kolors preset is refused.
COMMUNITY_PRESETS = {"SD1.5": "SD1.5 composition (community)", "SDXL": "SDXL composition (community)"}
# The port's InsightFace providers as onnxruntime names them (without "ExecutionProvider"), as this pack lists them.
PROVIDERS = {"CPU": "CPU", "CUDA": "CUDA", "ROCM": "ROCM", "DirectML": "Dml", "OpenVINO": "OpenVINO",
             "CoreML": "CoreML"}  # fmt: skip

# IPAdapter (the port's simple node) maps its three weight types onto these, as the port does when it runs.
SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
# The port's combine_embeds over a batch of reference images: only concat is what this pack's Encode does.
COMBINE_METHODS = ("concat", "add", "subtract", "average", "norm average")
