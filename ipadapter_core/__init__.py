"""The IP-Adapter core: checkpoint formats, detection, layer map, attention math, embeds, the ComfyUI patch.

Only `patch.py` (at call time) and `memory.py` import ComfyUI; everything else is plain torch.
"""
