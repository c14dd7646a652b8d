"""The IP-Adapter itself. At the top, once for every mechanism: the Apply entry (`apply`), the image-prompt term and
its caches (`term`), the guider sides (`guider_sides`), the schedule, the controls' types (`controls`), the patch
protocol and stacking rule (`patch_protocol`), the family checks (`families`, `refused_options`), the attention
math, embeds, encoding, the UNet checkpoint formats and detection, the per-layer controls (`block_weights`,
`weight_types`, `embeds_scaling`, attention `masks`). One subpackage per patch mechanism, none importing another:
`unet/` (attn2 replace patches), `flux/` (double blocks), `mmdit/` (SD3 joint blocks).

ComfyUI is imported only at call time (the adapter weights' ModelPatcher, the unconditional pass of plus / full-face
adapters, ComfyUI's attention and block classes in the mechanisms); the rest is plain torch.
"""
