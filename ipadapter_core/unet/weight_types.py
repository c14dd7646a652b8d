"""`weight_type`: the per-layer map of the weight types users know from cubiq's ComfyUI_IPAdapter_plus.

Each cross-attention layer gets a `LayerControl`: its λ, whose image tokens it reads, and whether the "precise"
swap applies. t is the layer's transformer index (`blocks.py`), L the number of transformer modules
(SD1.5 16, SDXL 11), w = `weight`, c = `composition_weight`.

- linear: every layer w. Curves (any layout): ease in w·(0.05 + 0.95·(1 − t/L)); ease out w·(0.05 + 0.95·t/L);
  ease in-out w·(0.05 + 0.95·(1 − |t − L/2|/(L/2))); reverse in-out w·(0.05 + 0.95·|t − L/2|/(L/2));
  weak input / weak output / weak middle: w, that block × 0.2; strong middle: input and output × 0.2.
- Presets (SD1.5 and SDXL only), a weight per index, 0 elsewhere:

  | type | SDXL | SD1.5 |
  |---|---|---|
  | style transfer | 6: w | 0–3, 9–15: w |
  | composition | 3: w | 4: 0.25w, 5: w |
  | strong style transfer | all but 3: w | all but 4, 5: w |
  | style and composition | 3: c, 6: w | 0–3, 9–15: w; 4: 0.25c; 5: c |
  | strong style and composition | all w, 3: c | all w, 4 and 5: c |
  | style transfer precise | 3: w, 6: w | 0–3, 9–15: w; 4: 0.25w; 5: w |
  | composition precise | 3: w, 6: w, the rest 0.1w | 0–3, 9–15: w; 4: 0.25w; 5: w; 6, 7, 8: 0.1w |

  The composition modules are SDXL 3, SD1.5 4 and 5. In "style and composition" and "strong style and composition"
  they read `composition_embeds`. "style transfer precise" swaps at the composition modules, "composition precise"
  at all the others: there the unconditional pass reads the image's tokens and the conditional pass none (cubiq
  feeds it zero tokens, whose K' = V' = 0 make the term exactly 0), so guidance pushes away from that aspect.
  cubiq scales the swapped layers by a `style_boost` / `composition_boost`; this node has no such input, so they
  take w, cubiq's default.

Where this differs from cubiq's pack, on purpose:
- The middle block acts here. cubiq registers its middle-block patch under block id 1, while ComfyUI looks it up as
  `("middle", 0, i)`, so there no image prompt ever reaches the middle block (SD1.5 index 6, SDXL index 4). Here,
  as in diffusers and the paper, it gets its weight, so these types act on one module more than in cubiq's pack: linear, the curves, weak middle
  (0.2w there), strong middle, strong style transfer, strong style and composition (w there) and composition
  precise (0.1w). Style transfer, composition, style and composition and style transfer precise give the middle 0
  and so the same map.
- cubiq reads the composition image at index 3 on both layouts; on SD1.5 that is a style module at weight w, while
  its composition weights sit at 4 and 5. Here the composition image goes where c goes: SD1.5 4 and 5.

`block_weights`, when set, replaces the weights of the type's map (`block_weights.py`); the type's routing (which
modules read the composition image, where the precise swap applies) stays.
"""

from collections.abc import Sequence

from ..controls import LayerControl
from ..errors import IPAdapterError
from .block_weights import LayerKey, parse_block_weights
from .blocks import TransformerModule, layout_name

CURVES = (
    "linear", "ease in", "ease out", "ease in-out", "reverse in-out",
    "weak input", "weak output", "weak middle", "strong middle",
)  # fmt: skip
PRESETS = (
    "style transfer", "composition", "strong style transfer", "style and composition",
    "strong style and composition", "style transfer precise", "composition precise",
)  # fmt: skip
WEIGHT_TYPES = CURVES + PRESETS
COMPOSITION_MODULES = {"SDXL": (3,), "SD1.5": (4, 5)}
READS_COMPOSITION = ("style and composition", "strong style and composition")
WEAKENED_BLOCKS = {  # × 0.2
    "weak input": ("input",), "weak output": ("output",), "weak middle": ("middle",), "strong middle": ("input", "output"),
}  # fmt: skip


def curve_weight(weight_type: str, module: TransformerModule, *, count: int, weight: float) -> float:
    t, half = module.index, count / 2
    if weight_type == "ease in":
        return weight * (0.05 + 0.95 * (1 - t / count))
    if weight_type == "ease out":
        return weight * (0.05 + 0.95 * t / count)
    if weight_type == "ease in-out":
        return weight * (0.05 + 0.95 * (1 - abs(t - half) / half))
    if weight_type == "reverse in-out":
        return weight * (0.05 + 0.95 * abs(t - half) / half)
    if module.block[0] in WEAKENED_BLOCKS.get(weight_type, ()):
        return weight * 0.2
    return weight


def preset_weights(weight_type: str, layout: str, *, weight: float, composition_weight: float) -> dict[int, float]:
    """Transformer index → λ for a preset type; indexes not in the result get 0."""
    w, c = weight, composition_weight
    if layout == "SDXL":
        every = range(11)
        return {
            "style transfer": {6: w},
            "composition": {3: w},
            "strong style transfer": {t: w for t in every if t != 3},
            "style and composition": {3: c, 6: w},
            "strong style and composition": {**{t: w for t in every}, 3: c},
            "style transfer precise": {3: w, 6: w},
            "composition precise": {**{t: 0.1 * w for t in every}, 3: w, 6: w},
        }[weight_type]
    every = range(16)
    style = {t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}
    return {
        "style transfer": style,
        "composition": {4: 0.25 * w, 5: w},
        "strong style transfer": {t: w for t in every if t not in (4, 5)},
        "style and composition": {**style, 4: 0.25 * c, 5: c},
        "strong style and composition": {**{t: w for t in every}, 4: c, 5: c},
        "style transfer precise": {**style, 4: 0.25 * w, 5: w},
        "composition precise": {**style, 4: 0.25 * w, 5: w, 6: 0.1 * w, 7: 0.1 * w, 8: 0.1 * w},
    }[weight_type]


def module_routing(weight_type: str, module: TransformerModule, layout: str | None) -> tuple[str, bool]:
    """(embeds, swap_cond_uncond) of a module under a weight type."""
    is_composition = layout is not None and module.index in COMPOSITION_MODULES[layout]
    embeds = "composition" if weight_type in READS_COMPOSITION and is_composition else "main"
    swapped = (weight_type == "style transfer precise" and is_composition) or (
        weight_type == "composition precise" and not is_composition
    )
    return embeds, swapped


def layer_controls(
    modules: Sequence[TransformerModule],
    *,
    weight_type: str,
    weight: float,
    composition_weight: float,
    block_weights: str = "",
) -> dict[LayerKey, LayerControl]:
    """Every cross-attention layer's control under `weight_type`, its weights replaced by `block_weights` if set."""
    if weight_type not in WEIGHT_TYPES:
        raise IPAdapterError(f"Unknown weight_type '{weight_type}'; use one of: {', '.join(WEIGHT_TYPES)}.")
    layout = layout_name(modules)
    if weight_type in PRESETS and layout is None:
        raise IPAdapterError(
            f"weight_type '{weight_type}' is defined for the SD1.5 and SDXL layouts (16 or 11 transformer modules); "
            f"this model has {len(modules)}. Use linear or one of the curves (with block_weights for a map of your own)."
        )
    by_index = (
        preset_weights(weight_type, layout, weight=weight, composition_weight=composition_weight)
        if weight_type in PRESETS
        else {module.index: curve_weight(weight_type, module, count=len(modules), weight=weight) for module in modules}
    )
    replaced = parse_block_weights(block_weights, modules, weight=weight)
    controls = {}
    for module in modules:
        embeds, swapped = module_routing(weight_type, module, layout)
        for layer in module.layers:
            layer_weight = replaced[layer.key] if replaced is not None else by_index.get(module.index, 0.0)
            controls[layer.key] = LayerControl(weight=layer_weight, embeds=embeds, swap_cond_uncond=swapped)
    return controls
