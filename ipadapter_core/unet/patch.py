"""The attn2 replace patch that runs IP-Adapter inside ComfyUI's samplers.

One `LayerPatch` per cross-attention layer key holds the image-prompt terms of every Apply node stacked on the
model (each an `ImagePromptTerm`) and, if another pack had set a replace patch on that layer first, that patch,
which then computes the text attention instead of ComfyUI's optimized_attention.

Patch objects follow ComfyUI's protocol: `__call__(q, k, v, extra_options)` returns the attention output before
`to_out`; `to(device)` is called when the model is loaded or offloaded; `models()` hands the adapter weights'
ModelPatcher to ComfyUI's memory management. Stacking builds a new `LayerPatch` (`stacked_with`) and leaves the
one set on the model as it was; `to(device)` drops the cached K'/V' and moves a wrapped patch in place, and
`__deepcopy__` returns the patch itself, so `ModelPatcher.clone()` (which deep-copies model_options in 0.3.75)
copies no weights.
"""

import functools

import torch

from ..adapter import LoadedAdapter
from ..attention import add_scaled, image_prompt_attention
from ..embeds import ImagePromptEmbeds
from ..schedule import SigmaRange
from .layer_map import CrossAttentionLayer


class ImagePromptTerm:
    """One Apply node's contribution: an adapter, its embeds, λ and the step range; K'/V' cached per device."""

    def __init__(self, *, adapter: LoadedAdapter, weights_patcher, embeds: ImagePromptEmbeds, weight: float, sigmas: SigmaRange):
        self.adapter = adapter
        self.weights_patcher = weights_patcher  # ModelPatcher over adapter.model, shared by every term of this file
        self.embeds = embeds
        self.weight = weight
        self.sigmas = sigmas
        self._keys_values: dict[tuple, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    def keys_values(self, number: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K'/V' of layer `number` as `[2 (cond, uncond), T, hidden]`; computed once per load, not per step."""
        per_layer = self._keys_values.get((device, dtype))
        if per_layer is None:
            per_layer = self._keys_values[(device, dtype)] = {}
        if number not in per_layer:
            tokens = self._tokens(device, dtype)  # [2, N·T, C]
            per_layer[number] = self.adapter.model.layer(number)(tokens)
        return per_layer[number]

    def _tokens(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        projection = self.adapter.model.image_proj
        with torch.no_grad():
            both = torch.cat([self.embeds.positive, self.embeds.negative]).to(device=device, dtype=dtype)
            tokens = projection(both)  # [2N, T, C]
        images = self.embeds.image_count
        return tokens.reshape(2, images * tokens.shape[1], tokens.shape[2])  # [2, N·T, C]: one prompt per kind

    def forget_keys_values(self) -> None:
        self._keys_values = {}


def host_attention(q, k, v, extra_options):
    """The text attention exactly as ComfyUI's CrossAttention computes it without a patch."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(
        q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
    )


class LayerPatch:
    def __init__(self, *, layer: CrossAttentionLayer, terms: tuple[ImagePromptTerm, ...], base=None):
        self.layer = layer
        self.terms = terms
        self.base = base  # another pack's replace patch on this layer, or None for ComfyUI's own attention

    def __call__(self, q, k, v, extra_options):
        out = (self.base or host_attention)(q, k, v, extra_options)
        attention = functools.partial(host_attention, extra_options=extra_options)
        cond_or_uncond = extra_options.get("cond_or_uncond") or [0]
        for term in self.terms:
            if term.weight == 0:
                continue
            image_keys, image_values = term.keys_values(self.layer.number, q.device, q.dtype)
            image_out = image_prompt_attention(q, image_keys, image_values, cond_or_uncond, attention)
            gate = term.sigmas.gate(extra_options["sigmas"], q.dtype) if "sigmas" in extra_options else None
            out = add_scaled(out, image_out, weight=term.weight, gate=gate)
        return out

    def stacked_with(self, term: ImagePromptTerm) -> "LayerPatch":
        return LayerPatch(layer=self.layer, terms=(*self.terms, term), base=self.base)

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.device):
            for term in self.terms:
                term.forget_keys_values()
        if hasattr(self.base, "to"):
            self.base = self.base.to(device_or_dtype)
        return self

    def models(self) -> list:
        base_models = self.base.models() if hasattr(self.base, "models") else []
        return [*{id(term.weights_patcher): term.weights_patcher for term in self.terms}.values(), *base_models]

    def __deepcopy__(self, memo):
        return self

