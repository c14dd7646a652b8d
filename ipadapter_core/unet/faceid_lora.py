"""The LoRA inside IP-Adapter FaceID files, put on the UNet through ComfyUI's weight patches.

The file's `ip_adapter` part holds, for every attention processor N (diffusers' order: see layer_map; attn1 of the
i-th transformer block is 2i, its attn2 2i + 1), `N.to_{q,k,v,out}_lora.{down,up}.weight` (rank 128). The reference
adds `up @ down` to `to_q`, `to_k`, `to_v` and `to_out.0` of that layer, without alpha: W + strength · up @ down.
Here each becomes a LoRA weight patch (`model.add_patches`) on the cloned ModelPatcher, so ComfyUI applies it when
the model loads, together with any other LoRA, and removes it when another model is used.

One file's LoRA acts once per model: a second Apply node with the same file on a model that already carries it
adds no second copy (the reference trains and runs the LoRA once, whatever the number of faces).
"""

from ..errors import IPAdapterError
from .layer_map import transformer_blocks_in_order

PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}
CARRIED_KEY = "decoupled_ipadapter_faceid_loras"  # model_options entry: the files whose LoRA the model carries


def lora_weight_patches(diffusion_model, lora: dict, *, source: str) -> dict:
    """`{"diffusion_model.<path>.attn1.to_q.weight": LoRAAdapter, …}` for the file's LoRA on this UNet."""
    from comfy.weight_adapter import LoRAAdapter

    blocks = list(transformer_blocks_in_order(diffusion_model))
    patches = {}
    for key in lora:
        if not key.endswith(".down.weight"):
            continue
        number, name = key.split(".")[:2]  # "12", "to_q_lora"
        block_index, is_cross = divmod(int(number), 2)
        if block_index >= len(blocks):
            raise IPAdapterError(
                f"'{source}' has a LoRA for attention layer {number}, but the model has {2 * len(blocks)} attention "
                "layers. Use the FaceID file made for this model's base (SD1.5 or SDXL)."
            )
        projection = PROJECTIONS[name[len("to_") : -len("_lora")]]
        up = lora[f"{number}.{name}.up.weight"]
        down = lora[key]
        weight_key = f"diffusion_model.{blocks[block_index][1]}.attn{2 if is_cross else 1}.{projection}.weight"
        patches[weight_key] = LoRAAdapter(set(), (up, down, None, None, None, None))  # W + strength · up @ down
    return patches


def add_faceid_lora(patched, adapter, *, strength: float) -> None:
    """Put the LoRA of the FaceID file `adapter` on the cloned ModelPatcher `patched` at `strength`, unless it has
    none, strength is 0, or the model carries this file's LoRA already."""
    if not adapter.lora or strength == 0:
        return
    carried = patched.model_options.get(CARRIED_KEY, ())
    if adapter.source in carried:
        return
    patches = lora_weight_patches(patched.get_model_object("diffusion_model"), adapter.lora, source=adapter.source)
    added = patched.add_patches(patches, strength_patch=float(strength))
    if len(added) != len(patches):
        missing = sorted(set(patches) - set(added))[:3]
        raise IPAdapterError(f"'{adapter.source}''s LoRA does not fit this model ({missing} not found). Use the FaceID file made for this model.")
    patched.model_options[CARRIED_KEY] = (*carried, adapter.source)
