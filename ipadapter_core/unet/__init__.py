"""The UNet patch mechanism (SD1.5, SDXL): every cross-attention layer's attn2 gets an image-prompt replace patch.

`format` reads the h94 SD1.5 / SDXL IP-Adapter files (what each is and its model), `layer_map` numbers the layers as
the checkpoints do, `blocks` names their transformer modules as ComfyUI, diffusers and cubiq's weight types do,
`block_weights` and `weight_types` give each layer its control, `patch` is the replace patch ComfyUI calls, and
`apply` checks that adapter, model and embeds fit and patches a clone of the model.
"""
