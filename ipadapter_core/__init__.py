"""The IP-Adapter itself. At the top, once for every mechanism: the Apply entry (`apply`), the adapter loader that
tells a file's family (`adapter`), reading weights files safely into the image_proj / ip_adapter parts (`formats`), the CLIP encoders (`encoders`), embeds
and encoding, the image-prompt term and its caches (`term`), the guider sides (`guider_sides`), the schedule, the
controls' types (`controls`), the block_weights text every family reads (`block_weights`), the attention math,
attention `masks`, `embeds_scaling`, the model-source table and `presets`, the patch protocol and stacking rule (`patch_protocol`), the family checks
(`families`, `refused_options`). One subpackage per patch mechanism, each with its family's file format and
detection, none importing another: `unet/` (attn2 replace patches; its block_weights and weight types), `flux/`
(double blocks; its block_weights), `mmdit/` (SD3 joint blocks).

ComfyUI is imported only at call time (the adapter weights' ModelPatcher, the unconditional pass of plus / full-face
adapters, ComfyUI's attention and block classes in the mechanisms); the rest is plain torch.
"""
