"""Torch modules of the IP-Adapter checkpoints (no ComfyUI imports)."""
