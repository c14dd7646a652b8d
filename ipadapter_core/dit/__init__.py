"""The DiT patch mechanism: a `patches_replace["dit"][("double_block", i)]` patch per double (Flux) or joint (SD3)
block.

Flux: `flux_format` reads the XLabs Flux IP-Adapter file, `patch` is the block patch ComfyUI calls, and `apply`
checks that adapter, model and embeds fit and patches a clone of the model (and dispatches to SD3).
SD3: `sd3_format` reads the InstantX SD3.5 IP-Adapter file, `sd3_term` computes its timestep-dependent tokens,
`sd3_patch` is the joint-block patch and `sd3_apply` patches a clone.
"""
