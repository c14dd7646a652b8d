"""The IP-Adapter itself: checkpoint formats and detection, the attention math, embeds and their combination,
encoding reference images, schedules, the per-layer controls (`block_weights`, `weight_types`, `embeds_scaling`,
attention `masks`), and one subpackage per patch mechanism (`unet/`: attn2 replace patches).

ComfyUI is imported only at call time, in `memory.py` (the adapter weights' ModelPatcher), `encoding.py` (the
unconditional pass of plus / full-face adapters) and `unet/patch.py` (ComfyUI's optimized attention); the rest is
plain torch.
"""
