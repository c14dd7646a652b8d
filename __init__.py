"""Decoupled IP-Adapter: image prompts for ComfyUI (Ye et al., 2023), exact to the reference implementation.

ComfyUI loads this folder as a custom node pack and calls `comfy_entrypoint` (V3 node API).
"""


async def comfy_entrypoint():
    from .nodes import DecoupledIPAdapterExtension, register_model_folder

    register_model_folder()
    return DecoupledIPAdapterExtension()
