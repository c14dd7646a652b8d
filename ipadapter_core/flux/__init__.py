"""The Flux mechanism: `patches_replace["dit"]` patches on the double-stream blocks (XLabs, InstantX) and the
single-stream blocks (InstantX).

`format` reads the XLabs Flux IP-Adapter file and names the family (`FLUX_FAMILY`: its blocks, its refusals),
`instantx_format` the InstantX FLUX.1-dev file (`INSTANTX_FLUX_FAMILY`), `block_weights` parses a weight per block,
`blocks` computes a double or single block from its own modules with InstantX's term inside the attention, `patch`
holds the block patches ComfyUI calls, and `apply` checks that adapter, model and embeds fit and patches a clone of
the model.
"""
