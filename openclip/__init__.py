"""CLIP models saved in the OpenCLIP format, as ComfyUI CLIP vision models (for Encode Image) and as both towers
(for the scores in `scoring/`). The only part of the pack that imports open_clip."""
