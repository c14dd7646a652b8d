"""Adapter weights under ComfyUI's memory management: loaded to the compute device with the UNet, offloadable."""

from dataclasses import dataclass

from .adapter import LoadedAdapter


@dataclass(frozen=True, eq=False)
class ManagedAdapter:
    """What the Load IPAdapter node outputs: the adapter and the one ModelPatcher over its weights."""

    adapter: LoadedAdapter
    weights_patcher: object  # comfy.model_patcher.ModelPatcher


def manage(adapter: LoadedAdapter) -> ManagedAdapter:
    import comfy.model_management
    import comfy.model_patcher

    patcher = comfy.model_patcher.ModelPatcher(
        adapter.model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
    return ManagedAdapter(adapter=adapter, weights_patcher=patcher)
