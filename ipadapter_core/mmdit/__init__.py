"""The MMDiT (SD3) mechanism: a `patches_replace["dit"][("double_block", i)]` patch per joint block.

`format` reads the InstantX SD3.5 IP-Adapter file and names the family (`SD3_FAMILY`), `term` computes its
timestep-dependent tokens, `patch` is the joint-block patch ComfyUI calls, and `apply` checks that adapter, model and
embeds fit and patches a clone.
"""
