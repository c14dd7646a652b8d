"""Decoupled IP-Adapter: image prompts for ComfyUI (Ye et al., 2023), exact to the reference implementation.

ComfyUI loads this folder as a custom node pack and calls `comfy_entrypoint` (V3 node API).
"""


# The editor extension: offers to convert a ComfyUI_IPAdapter_plus workflow when one is opened.
WEB_DIRECTORY = "./nodes/web"


async def comfy_entrypoint():
    from .nodes import DecoupledIPAdapterExtension, register_model_folder
    from .nodes.port_workflows_route import register_routes

    register_model_folder()
    register_routes()
    return DecoupledIPAdapterExtension()
