"""The IP-Adapter itself. At the top, once for every mechanism: the Apply entry (`apply`), the image-prompt term and
its caches (`term`), the guider sides (`guider_sides`), the schedule, the controls' data type (`controls`), the
patch protocol (`patch_protocol`), the attention math, embeds, encoding and the UNet checkpoint formats and
detection, the per-layer controls (`block_weights`, `weight_types`, `embeds_scaling`, attention `masks`). One
subpackage per patch mechanism, none importing another: `unet/` (attn2 replace patches), `flux/` (double blocks),
`mmdit/` (SD3 joint blocks).

ComfyUI is imported only at call time (the adapter weights' ModelPatcher, the unconditional pass of plus / full-face
adapters, ComfyUI's attention and block classes in the mechanisms); the rest is plain torch.
"""
