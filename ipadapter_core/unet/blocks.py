"""The UNet's transformer modules (SpatialTransformers) under the three names users address them by.

- ComfyUI's `(block_name, block_id)`: the module in `input_blocks.N`, `middle_block` or `output_blocks.N`, the
  first two parts of the attn2 patch key.
- diffusers' module name, as `set_ip_adapter_scale` dicts address it: `down_blocks.i.attentions.j`,
  `mid_block.attentions.0`, `up_blocks.i.attentions.j`. Down block i is ComfyUI's resolution level i (its j-th
  ResBlock); up block i is level `levels − 1 − i` read on the way up.
- the transformer index t of cubiq's ComfyUI_IPAdapter_plus (its weight types and `"t:v"` layer-weight strings):
  ComfyUI's `transformer_options["transformer_index"]`, which counts SpatialTransformers in forward order,
  input → middle → output (SD1.5: 16 of them, 0–5 input, 6 middle, 7–15 output; SDXL: 11, 0–3, 4, 5–10).

One module holds one cross-attention layer per transformer block (SD1.5: 1; SDXL: 2 or 10).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from .layer_map import CrossAttentionLayer, cross_attention_layers

FORWARD_ORDER = {"input": 0, "middle": 1, "output": 2}
DIFFUSERS_PART = {"input": "down", "middle": "mid", "output": "up"}
LAYOUT_OF_MODULE_COUNT = {16: "SD1.5", 11: "SDXL"}  # SD2.x has SD1.5's layout


@dataclass(frozen=True)
class TransformerModule:
    index: int  # cubiq's transformer index t
    block: tuple[str, int]  # ComfyUI's (block_name, block_id)
    part: str  # diffusers' "down", "mid" or "up"
    block_number: int  # i in diffusers' down_blocks.i / up_blocks.i (0 for mid)
    attention: int  # j in diffusers' attentions.j
    layers: tuple[CrossAttentionLayer, ...]  # one per transformer block, in order

    @property
    def diffusers_name(self) -> str:
        if self.part == "mid":
            return "mid_block.attentions.0"
        return f"{self.part}_blocks.{self.block_number}.attentions.{self.attention}"


def diffusers_positions(num_res_blocks: Sequence[int]) -> dict[tuple[str, int], tuple[int, int]]:
    """ComfyUI `(block_name, block_id)` → diffusers `(block_number, attention)`, from the ResBlocks per level.

    input_blocks: the stem convolution, then per level its ResBlocks and (but after the last level) a downsampling
    block; output_blocks: per level from the deepest, its ResBlocks + 1.
    """
    positions = {("middle", 0): (0, 0)}
    block_id = 1
    for level, count in enumerate(num_res_blocks):
        for attention in range(count):
            positions[("input", block_id)] = (level, attention)
            block_id += 1
        block_id += 1  # the downsampling block
    block_id = 0
    for up_number, level in enumerate(reversed(range(len(num_res_blocks)))):
        for attention in range(num_res_blocks[level] + 1):
            positions[("output", block_id)] = (up_number, attention)
            block_id += 1
    return positions


def transformer_modules(
    layers: Sequence[CrossAttentionLayer], *, num_res_blocks: Sequence[int]
) -> tuple[TransformerModule, ...]:
    """Group the cross-attention layers (layer_map's) into their transformer modules, in forward order."""
    by_block: dict[tuple[str, int], list[CrossAttentionLayer]] = {}
    for layer in layers:
        by_block.setdefault(layer.key[:2], []).append(layer)
    positions = diffusers_positions(num_res_blocks)
    ordered = sorted(by_block, key=lambda block: (FORWARD_ORDER[block[0]], block[1]))
    modules = []
    for index, block in enumerate(ordered):
        block_number, attention = positions[block]
        module_layers = tuple(sorted(by_block[block], key=lambda layer: layer.key[2]))  # transformer_blocks order
        modules.append(
            TransformerModule(
                index=index,
                block=block,
                part=DIFFUSERS_PART[block[0]],
                block_number=block_number,
                attention=attention,
                layers=module_layers,
            )
        )
    return tuple(modules)


def unet_transformer_modules(diffusion_model) -> tuple[TransformerModule, ...]:
    """The transformer modules of a ComfyUI UNet (`model.get_model_object("diffusion_model")`)."""
    return transformer_modules(cross_attention_layers(diffusion_model), num_res_blocks=diffusion_model.num_res_blocks)


def layout_name(modules: Sequence[TransformerModule]) -> str | None:
    """"SD1.5" or "SDXL" when the model has that layout of transformer modules, else None."""
    return LAYOUT_OF_MODULE_COUNT.get(len(modules))
