"""Training an IP-Adapter (the paper's §3.3) on a ComfyUI UNet model (SD1.5, SDXL).

- `method.py`: the method as pure functions: the drop choices, the step seeds, a new adapter's initial weights, the
  denoising loss in the model's own parameterisation.
- `patch.py`: the attn2 replace patch that trains: the same attention and K'/V' layers as Apply's, with every batch
  row reading its own reference's tokens, and gradients into the adapter only.
- `dataset.py`: the pictures and captions checked and encoded once (latents, CLIP vision, text).
- `files.py`: the trained adapter in the official format, and the training state beside it (for resuming).
- `loop.py`: the training run: ComfyUI's memory management, the steps, progress, cancelling.
- `loss_curve.py`: the loss curve as a picture.
"""
