"""The attn2 replace patch that trains the adapter: Apply's decoupled cross-attention with a reference per batch row.

    out = Attn(Q, K_text, V_text) + Attn(Q, K'_b, V'_b),   K'_b = to_k_ip(tokens_b), V'_b = to_v_ip(tokens_b)

Each layer computes what Apply's `LayerPatch` computes at λ = 1 with one reference image (the same host attention,
image attention and K'/V' modules, unet/patch.py), but batch row b reads the tokens of its own reference
(`TrainingBatch.tokens[b]`, set before each model call), and K'/V' are computed with gradients, not cached.
"""

import torch

from ..attention import merge_heads, split_heads
from ..unet.layer_map import CrossAttentionLayer, cross_attention_layers
from ..unet.patch import host_attention, image_attention


class TrainingBatch:
    """The image tokens `[B, T, C]` of the model call in progress, one row per batch row (shared by all layers)."""

    tokens: torch.Tensor | None = None


class TrainingLayerPatch:
    def __init__(self, *, layer: CrossAttentionLayer, adapter: torch.nn.Module, batch: TrainingBatch):
        self.layer = layer
        self.adapter = adapter  # the IPAdapterModel being trained
        self.batch = batch

    def __call__(self, q, k, v, extra_options):
        out = host_attention(q, k, v, extra_options)
        heads = extra_options["n_heads"]
        keys, values = self.adapter.layer(self.layer.number)(self.batch.tokens.to(q.dtype))  # [B, T, H·D] each
        image = image_attention(split_heads(q, heads), split_heads(keys, heads), split_heads(values, heads), extra_options)
        return out + merge_heads(image)  # [B, Nq, H·D]

    def to(self, device_or_dtype):
        """ComfyUI's patch protocol: the adapter is moved by the training loop, not with the model."""
        return self


def training_model(model, adapter: torch.nn.Module, batch: TrainingBatch):
    """A clone of the ModelPatcher `model` with a training patch on every cross-attention layer, under the keys
    Apply uses (unet/apply.py)."""
    patched = model.clone()
    for layer in cross_attention_layers(patched.get_model_object("diffusion_model")):
        patch = TrainingLayerPatch(layer=layer, adapter=adapter, batch=batch)
        for key in (layer.key, layer.block_key):
            if key is not None:
                patched.set_model_attn2_replace(patch, *key)
    return patched
