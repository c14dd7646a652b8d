"""The attn2 replace patch that runs IP-Adapter inside ComfyUI's samplers.

One `LayerPatch` per cross-attention layer holds the image-prompt terms of every Apply node stacked on the model
(each an `ImagePromptTerm`), the replace patch another pack had set on that layer first (`base`: it then computes
the text attention instead of ComfyUI's optimized_attention), and the callbacks other packs added to it later
through the `add(callback, **kwargs)` protocol of cubiq's IPAdapter, InstantID and PuLID packs.

Per call: the text attention, then each term that acts at this layer and step (λ ≠ 0, sigma in range: a Python
decision, see passes.py) adds `Attn(Q, K', λ·V')` with the tokens of each chunk's side, then the added callbacks.

Patch objects follow ComfyUI's protocol: `__call__(q, k, v, extra_options)` returns the attention output before
`to_out`; `to(device)` is called when the model is loaded or offloaded (the term caches on other devices are
dropped); `models()` hands the adapter weights' ModelPatcher to ComfyUI's memory management. Stacking builds a new `LayerPatch` (`stacked_with`); every clone of a
patched model gets its own LayerPatch objects (`copy_patches_for_clone`, an ON_CLONE callback), sharing the terms,
so another pack's `add()` on a clone changes that clone only; `__deepcopy__` returns the patch itself, so
`ModelPatcher.clone()` (which deep-copies model_options in 0.3.75) copies no weights.
"""

import torch

from ..adapter import LoadedAdapter
from ..attention import image_prompt_attention
from ..embeds import ImagePromptEmbeds
from ..schedule import SigmaRange
from .layer_map import CrossAttentionLayer
from .passes import call_sigma, chunk_sides

CLONE_CALLBACK_KEY = "decoupled_ipadapter"


class ImagePromptTerm:
    """One Apply node's contribution: an adapter, its embeds, λ and the step range. The image tokens are projected
    once per device and dtype, K'/V' computed once per layer and device and dtype: not per step."""

    def __init__(self, *, adapter: LoadedAdapter, weights_patcher, embeds: ImagePromptEmbeds, weight: float, sigmas: SigmaRange):
        self.adapter = adapter
        self.weights_patcher = weights_patcher  # ModelPatcher over adapter.model, shared by every term of this file
        self.embeds = embeds
        self.weight = weight
        self.sigmas = sigmas
        self._tokens: dict[tuple, torch.Tensor] = {}
        self._keys_values: dict[tuple, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    def layer_weight(self, layer: CrossAttentionLayer) -> float:
        """λ at this layer (one value for every layer today)."""
        return self.weight

    def acts_at(self, layer: CrossAttentionLayer, sigma: float | None) -> bool:
        return self.layer_weight(layer) != 0 and self.sigmas.contains(sigma)

    def keys_values(self, layer: CrossAttentionLayer, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """K' and λ·V' of `layer` as `[2 (cond, uncond), T, hidden]` (Attn(Q, K', λV') = λ·Attn(Q, K', V'))."""
        per_layer = self._keys_values.setdefault((device, dtype), {})
        if layer.number not in per_layer:
            with torch.no_grad():
                keys, values = self.adapter.model.layer(layer.number)(self.tokens(device, dtype))
            per_layer[layer.number] = (keys, values * self.layer_weight(layer))
        return per_layer[layer.number]

    def tokens(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The projected image tokens `[2 (cond, uncond), N·T, C]`: the N images of the prompt side by side."""
        if (device, dtype) not in self._tokens:
            projection = self.adapter.model.image_proj
            with torch.no_grad():
                both = torch.cat([self.embeds.positive, self.embeds.negative]).to(device=device, dtype=dtype)
                tokens = projection(both)  # [2N, T, C]
            images = self.embeds.image_count
            self._tokens[(device, dtype)] = tokens.reshape(2, images * tokens.shape[1], tokens.shape[2])  # [2, N·T, C]
        return self._tokens[(device, dtype)]

    def keep_cached_only_on(self, device: torch.device) -> None:
        """Drop the tokens and K'/V' held on other devices (the model moved): memory is freed where it left."""
        self._tokens = {key: value for key, value in self._tokens.items() if key[0] == device}
        self._keys_values = {key: value for key, value in self._keys_values.items() if key[0] == device}


def host_attention(q, k, v, extra_options):
    """The text attention exactly as ComfyUI's CrossAttention computes it without a patch."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(
        q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
    )


def image_attention(q, k, v, extra_options):
    """Attn(Q, K', V') with the attention ComfyUI picks for short key sequences (the image tokens): PyTorch's
    scaled_dot_product_attention where ComfyUI enables it, its basic attention otherwise."""
    from comfy.ldm.modules.attention import optimized_attention_for_device

    attention = optimized_attention_for_device(q.device, small_input=True)
    return attention(
        q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
    )


def other_pack_acts_at(kwargs: dict, sigma: float | None) -> bool:
    """The step range of a callback added through `add()`: its `sigma_start`/`sigma_end` keyword arguments."""
    if sigma is None or "sigma_start" not in kwargs or "sigma_end" not in kwargs:
        return True
    return kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]


class LayerPatch:
    def __init__(self, *, layer: CrossAttentionLayer, terms: tuple[ImagePromptTerm, ...], base=None, added=()):
        self.layer = layer
        self.terms = terms
        self.base = base  # another pack's replace patch on this layer, or None for ComfyUI's own attention
        self.added = list(added)  # (callback, kwargs) that other packs put here with add()

    def __call__(self, q, k, v, extra_options):
        out = (self.base or host_attention)(q, k, v, extra_options)
        sigma = call_sigma(extra_options)
        active = [term for term in self.terms if term.acts_at(self.layer, sigma)]
        if active:
            out = out + self.image_prompt(q, active, extra_options)
        for callback, kwargs in self.added:
            if other_pack_acts_at(kwargs, sigma):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def image_prompt(self, q, terms: list[ImagePromptTerm], extra_options) -> torch.Tensor:
        """Σ_terms Attn(Q, K', λ·V'), each term its own attention call (its own softmax). q: `[B, Nq, H·D]`."""
        sides = chunk_sides(extra_options)

        def attention(q, k, v):
            return image_attention(q, k, v, extra_options)

        total = None
        for term in terms:
            image_keys, image_values = term.keys_values(self.layer, q.device, q.dtype)
            term_out = image_prompt_attention(q, image_keys, image_values, sides, attention)  # [B, Nq, H·D], a new tensor
            total = term_out if total is None else total.add_(term_out)
        return total

    def add(self, callback, **kwargs) -> None:
        """The protocol of cubiq's IPAdapter, InstantID and PuLID packs: they call this on the patch they find on a
        layer; `callback(out, q, k, v, extra_options, **kwargs)` returns a term added to the output."""
        self.added.append((callback, kwargs))

    def stacked_with(self, term: ImagePromptTerm) -> "LayerPatch":
        return LayerPatch(layer=self.layer, terms=(*self.terms, term), base=self.base, added=self.added)

    def copy(self) -> "LayerPatch":
        return LayerPatch(layer=self.layer, terms=self.terms, base=self.base, added=self.added)

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.device):
            for term in self.terms:
                term.keep_cached_only_on(device_or_dtype)
        if hasattr(self.base, "to"):
            self.base = self.base.to(device_or_dtype)
        return self

    def models(self) -> list:
        base_models = self.base.models() if hasattr(self.base, "models") else []
        return [*{id(term.weights_patcher): term.weights_patcher for term in self.terms}.values(), *base_models]

    def __deepcopy__(self, memo):
        return self


def is_layer_patch(patch) -> bool:
    """Ours, also when the pack was imported twice under two module names (so no isinstance)."""
    return isinstance(getattr(patch, "terms", None), tuple) and hasattr(patch, "stacked_with")


def copy_patches_for_clone(original, clone) -> None:
    """ON_CLONE callback: the clone's attn2 patches become its own LayerPatch objects (one copy per object, so a
    patch set under two keys stays one), in new dicts, so a later `add()` on the clone does not reach the original."""
    options = clone.model_options.get("transformer_options", {})
    attn2 = options.get("patches_replace", {}).get("attn2", {})
    copies = {id(patch): patch.copy() for patch in attn2.values() if is_layer_patch(patch)}
    if copies:
        own = {key: copies.get(id(patch), patch) for key, patch in attn2.items()}
        clone.model_options["transformer_options"] = {**options, "patches_replace": {**options["patches_replace"], "attn2": own}}


def copy_patches_on_clone(model_patcher) -> None:
    from comfy.patcher_extension import CallbacksMP

    if not model_patcher.get_callbacks(CallbacksMP.ON_CLONE, CLONE_CALLBACK_KEY):
        model_patcher.add_callback_with_key(CallbacksMP.ON_CLONE, CLONE_CALLBACK_KEY, copy_patches_for_clone)
