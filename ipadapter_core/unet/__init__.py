"""The UNet patch mechanism (SD1.5, SDXL): every cross-attention layer's attn2 gets an image-prompt replace patch.

`layer_map` numbers the layers as the checkpoints do, `blocks` names their transformer modules as ComfyUI, diffusers
and cubiq's weight types do, `patch` is the replace patch ComfyUI calls, and `apply` checks that adapter, model and
embeds fit and patches a clone of the model.
"""
