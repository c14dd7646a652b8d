"""Reference pictures before the image encoder: preparing them (crop, resize, sharpen) and noise pictures for the
negative. ComfyUI IMAGE tensors, [B, H, W, C] in [0, 1]."""
