"""The Flux mechanism: a `patches_replace["dit"][("double_block", i)]` patch per double-stream block.

`format` reads the XLabs Flux IP-Adapter file and names the family (`FLUX_FAMILY`: its blocks, its refusals),
`block_weights` parses a weight per double block, `patch` is the block patch ComfyUI calls, and `apply` checks that
adapter, model and embeds fit and patches a clone of the model.
"""
