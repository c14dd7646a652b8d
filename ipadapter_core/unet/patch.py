"""The attn2 replace patch that runs IP-Adapter inside ComfyUI's samplers.

One `LayerPatch` per cross-attention layer holds the image-prompt terms of every Apply node stacked on the model
(each an `ImagePromptTerm`), the replace patch another pack had set on that layer first (`base`: it then computes
the text attention instead of ComfyUI's optimized_attention), and the callbacks other packs added to it later
through the `add(callback, **kwargs)` protocol of cubiq's IPAdapter, InstantID and PuLID packs.

Per call: the text attention, then each term that acts at this layer and step (its λ here ≠ 0, sigma in range: a
Python decision, see guider_sides.py) adds `Attn(Q, K', λ·V')` (times its mask, if it has one) with the tokens of each
chunk's side, then the added callbacks. A term with a weight per latent or `unfold_batch` gives each row its own K'/V'
(`ImagePromptTerm.row_keys_values`), for the latents the rows hold (unfold.py: the context window's, if any).

`__call__(q, k, v, extra_options)` returns the attention output before `to_out`; `to`, `models` and `__deepcopy__`
are ComfyUI's patch protocol (patch_protocol.py). Stacking builds a new `LayerPatch` (`stacked_with`); every clone
of a patched model gets its own LayerPatch objects (`copy_patches_for_clone`, an ON_CLONE callback), sharing the
terms, so another pack's `add()` on a clone changes that clone only.
"""

import torch

from ..attention import (
    chunk_rows,
    image_prompt_attention,
    masked_image_prompt_attention,
    merge_heads,
    row_image_prompt_attention,
    split_heads,
)
from ..guider_sides import call_sigma, chunk_sides
from ..patch_protocol import TermsPatch, is_terms_patch
from ..term import ImagePromptTerm
from ..unfold import latent_indices
from .layer_map import CrossAttentionLayer

CLONE_CALLBACK_KEY = "decoupled_ipadapter"


def host_attention(q, k, v, extra_options):
    """The text attention exactly as ComfyUI's CrossAttention computes it without a patch."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(
        q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options
    )


def image_attention(q, k, v, extra_options):
    """Attn(Q, K', V') in the heads layout `[B, H, N, D]`, with the attention ComfyUI picks for short key sequences
    (the image tokens): PyTorch's scaled_dot_product_attention where ComfyUI enables it, its basic attention otherwise."""
    from comfy.ldm.modules.attention import optimized_attention_for_device

    attention = optimized_attention_for_device(q.device, small_input=True)
    return attention(
        q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"), skip_reshape=True,
        skip_output_reshape=True, transformer_options=extra_options,
    )  # fmt: skip


def other_pack_acts_at(kwargs: dict, sigma: float | None) -> bool:
    """The step range of a callback added through `add()`: its `sigma_start`/`sigma_end` keyword arguments."""
    if sigma is None or "sigma_start" not in kwargs or "sigma_end" not in kwargs:
        return True
    return kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]


class LayerPatch(TermsPatch):
    def __init__(self, *, layer: CrossAttentionLayer, terms: tuple[ImagePromptTerm, ...], base=None, added=()):
        self.layer = layer
        self.terms = terms
        self.base = base  # another pack's replace patch on this layer, or None for ComfyUI's own attention
        self.added = list(added)  # (callback, kwargs) that other packs put here with add()

    def __call__(self, q, k, v, extra_options):
        out = (host_attention if self.base is None else self.base)(q, k, v, extra_options)
        sigma = call_sigma(extra_options)
        active = [term for term in self.terms if term.acts_at(self.layer, sigma)]
        prompt = self.image_prompt(q, active, extra_options) if active else None
        if prompt is not None:
            out = out + prompt
        for callback, kwargs in self.added:
            if other_pack_acts_at(kwargs, sigma):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def image_prompt(self, q, terms: list[ImagePromptTerm], extra_options) -> torch.Tensor | None:
        """Σ_terms Attn(Q, K', λ·V') (· mask), each term its own attention call (its own softmax), Q split into heads
        once for all of them. q: `[B, Nq, H·D]`. None where no term adds anything (per-latent weights all 0 here)."""
        sides = chunk_sides(extra_options)
        latent_shape = extra_options.get("original_shape")  # [B, C, H, W] of the latent, as ComfyUI's UNet gives it
        latent_size = tuple(latent_shape[-2:]) if latent_shape is not None else None
        q_heads = split_heads(q, extra_options["n_heads"]).contiguous()  # [B, H, Nq, D]

        def attention(q, k, v):
            return image_attention(q, k, v, extra_options)

        total = None
        for term in terms:
            if term.per_latent is not None:
                term_out = self.per_latent_prompt(term, q_heads, sides, extra_options, attention, latent_size=latent_size)
                if term_out is not None:
                    total = term_out if total is None else total.add_(term_out)
                continue
            keys, values = term.keys_values(self.layer, q.device, q.dtype)  # [2, T, H·D] each
            if term.mask is None:
                term_out = image_prompt_attention(q_heads, keys, values, sides, attention)  # [B, H, Nq, D], new
            else:
                masks = term.masks(q.shape[1], q.device, q.dtype, latent_size=latent_size)  # [M, Nq, 1]
                term_out = masked_image_prompt_attention(q_heads, keys, values, sides, attention, masks=masks)
            total = term_out if total is None else total.add_(term_out)
        return None if total is None else merge_heads(total)  # [B, Nq, H·D]

    def per_latent_prompt(
        self, term: ImagePromptTerm, q_heads, sides, extra_options, attention, *, latent_size
    ) -> torch.Tensor | None:
        """`Attn(Q, K'_b, V'_b)` (· mask) with each row b's own K'/V' (its latent's λ, image and side), `[B, H, Nq,
        D]`; None where every latent of this call has λ = 0 here."""
        batch, _, queries = q_heads.shape[:3]
        indices = latent_indices(extra_options, chunk_rows(batch, sides))
        if not term.per_latent.acts_on_latents(self.layer.key, indices):
            return None
        device, dtype = q_heads.device, q_heads.dtype
        keys, values = term.row_keys_values(self.layer, device, dtype, sides=tuple(sides), indices=indices)  # [B, T, H·D]
        if term.mask is None:
            masks = ()
        elif term.per_latent.unfold:  # one mask per latent (or one for all)
            masks = (term.row_masks(queries, device, dtype, latent_size=latent_size, sides=tuple(sides), indices=indices),)
        else:  # one mask per image of the prompt (or one for all)
            masks = tuple(term.masks(queries, device, dtype, latent_size=latent_size).split(1))  # M × [1, Nq, 1]
        return row_image_prompt_attention(q_heads, keys, values, attention, masks=masks)

    def add(self, callback, **kwargs) -> None:
        """The protocol of cubiq's IPAdapter, InstantID and PuLID packs: they call this on the patch they find on a
        layer; `callback(out, q, k, v, extra_options, **kwargs)` returns a term added to the output."""
        self.added.append((callback, kwargs))

    def stacked_with(self, term: ImagePromptTerm) -> "LayerPatch":
        return LayerPatch(layer=self.layer, terms=(*self.terms, term), base=self.base, added=self.added)

    def copy(self) -> "LayerPatch":
        return LayerPatch(layer=self.layer, terms=self.terms, base=self.base, added=self.added)


def copy_patches_for_clone(original, clone) -> None:
    """ON_CLONE callback: the clone's attn2 patches become its own LayerPatch objects (one copy per object, so a
    patch set under two keys stays one), in new dicts, so a later `add()` on the clone does not reach the original."""
    options = clone.model_options.get("transformer_options", {})
    attn2 = options.get("patches_replace", {}).get("attn2", {})
    copies = {id(patch): patch.copy() for patch in attn2.values() if is_terms_patch(patch)}
    if copies:
        own = {key: copies.get(id(patch), patch) for key, patch in attn2.items()}
        clone.model_options["transformer_options"] = {**options, "patches_replace": {**options["patches_replace"], "attn2": own}}


def copy_patches_on_clone(model_patcher) -> None:
    from comfy.patcher_extension import CallbacksMP

    if not model_patcher.get_callbacks(CallbacksMP.ON_CLONE, CLONE_CALLBACK_KEY):
        model_patcher.add_callback_with_key(CallbacksMP.ON_CLONE, CLONE_CALLBACK_KEY, copy_patches_for_clone)
