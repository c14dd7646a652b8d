"""The UNet patch mechanism (SD1.5, SDXL): every cross-attention layer's attn2 gets an image-prompt replace patch.

`layer_map` numbers the layers as the checkpoints do, `patch` is the replace patch ComfyUI calls, and `apply`
checks that adapter, model and embeds fit and patches a clone of the model.
"""
