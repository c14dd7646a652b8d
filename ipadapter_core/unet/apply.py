"""Putting an image prompt on a ComfyUI model: check that adapter, model and embeds fit, then patch a clone."""

import torch

from ..adapter import LoadedAdapter
from ..controls import ApplyOptions
from ..embeds import ImagePromptEmbeds, check_embeds_fit
from ..embeds_scaling import check_embeds_scaling
from ..errors import IPAdapterError
from ..guider_sides import add_pass_wrappers
from ..masks import mask_batch
from ..patch_protocol import placed_patch
from ..term import ImagePromptTerm, term_basics
from ..unfold import PerLatent, affine_weights
from .blocks import unet_transformer_modules
from .faceid_lora import add_faceid_lora
from .format import BASE_OF_LAYER_COUNT
from .layer_map import CrossAttentionLayer, cross_attention_layers, is_unet
from .patch import LayerPatch, copy_patches_on_clone
from .weight_types import layer_controls

EXAMPLE_FILE = {"SD1.5": "ip-adapter_sd15.safetensors", "SDXL": "ip-adapter_sdxl_vit-h.safetensors"}


def check_adapter_fits_model(adapter: LoadedAdapter, layers: list[CrossAttentionLayer]) -> None:
    spec = adapter.spec
    model_widths = tuple(layer.hidden_size for layer in layers)
    context_dims = {layer.context_dim for layer in layers}
    if model_widths == spec.hidden_sizes and context_dims == {spec.cross_attention_dim}:
        return
    model_base = BASE_OF_LAYER_COUNT.get(len(layers), "another architecture")
    if not layers:
        model_text = "a model without cross-attention layers"
    else:
        model_text = f"a {model_base} model ({len(layers)} cross-attention layers, text width {sorted(context_dims)[0]})"
    fix = f"Load an IP-Adapter made for {model_base}" + (
        f", for example {EXAMPLE_FILE[model_base]}" if model_base in EXAMPLE_FILE else ""
    )
    raise IPAdapterError(
        f"'{adapter.source}' is an {spec.base} IP-Adapter ({spec.layer_count} layers, text width "
        f"{spec.cross_attention_dim}) but it was applied to {model_text}. {fix}, or a {spec.base} checkpoint."
    )


def check_model_is_unet(adapter: LoadedAdapter, model) -> None:
    """Flux, SD3 and the other DiT models have no UNet cross-attention blocks for the attn2 patch to reach."""
    diffusion_model = model.get_model_object("diffusion_model")
    if is_unet(diffusion_model):
        return
    config = getattr(model.model, "model_config", None)
    kind = type(config).__name__ if config is not None else type(model.model).__name__
    base = adapter.spec.base
    raise IPAdapterError(
        f"'{adapter.source}' is an {base} IP-Adapter, but the model is {kind} (diffusion model "
        f"{type(diffusion_model).__name__}), which has no UNet cross-attention blocks. SD1.5 and SDXL adapters "
        f"patch SD1.5 and SDXL UNets; Flux and SD3.5 Large models take their own IP-Adapters (XLabs Flux, InstantX "
        f"SD3.5), and other model kinds are not supported. Connect an {base} checkpoint to the model input."
    )


def check_mask_fits(
    mask: torch.Tensor, embeds: ImagePromptEmbeds, composition_embeds: ImagePromptEmbeds | None, *, unfold: bool = False
) -> torch.Tensor:
    """The attention mask as `[M, H, W]`: one mask for the whole image prompt, or M masks for N = M·G images, mask m
    for the G consecutive images m·G .. m·G + G - 1 (one softmax per group; G = 1: one mask per image). With
    `unfold` (image j prompts latent j alone) there are no groups: one mask, or one per image (= per latent)."""
    masks = mask_batch(mask)
    images = {embeds.image_count} | ({composition_embeds.image_count} if composition_embeds is not None else set())
    if unfold:
        fits = masks.shape[0] == 1 or images == {masks.shape[0]}
        rule = (
            ", with unfold_batch on. Give one mask (every latent), or one mask per reference image (latent j takes "
            "mask j, the last repeating), in the same order as the images."
        )
    else:
        fits = all(count % masks.shape[0] == 0 for count in images)
        rule = (
            ". Give one mask (it applies to the whole image prompt), one mask per reference image (each image then "
            "acts only in its own mask), in the same order as the images, or a number of masks the image count is a "
            "multiple of (each mask then covers that many consecutive images, which share one softmax, as IPAdapter "
            "Tiles' masks do)."
        )
    if fits:
        return masks
    counts = " and ".join(str(count) for count in sorted(images))
    raise IPAdapterError(f"attn_mask holds {masks.shape[0]} masks but the embeds hold {counts} reference images{rule}")


def apply_unet_image_prompt(
    model,
    adapter: LoadedAdapter,
    weights_patcher,
    embeds: ImagePromptEmbeds,
    options: ApplyOptions,
):
    """Return a clone of the ModelPatcher `model` whose cross-attention layers also attend to the image prompt.

    Every layer's λ, whose image tokens it reads and the precise swap come from `weight_type` and `block_weights`
    (weight_types.py); a layer whose λ is 0 gets no patch from this call (it costs nothing). A weight list or
    `unfold_batch` makes the term per latent (unfold.py): each layer's λ as a line in the weight, from its controls at
    weight 1 and 0; a layer gets a patch where some latent's λ is not 0. Several calls stack:
    every layer keeps one patch holding all terms (summed, each with its own softmax). A replace patch set on a
    layer by another pack is kept and called for the text attention, not dropped; a pack that comes later and calls
    `add()` on the patch it finds (cubiq's protocol) adds its callback to ours. A FaceID file's LoRA goes on the
    clone as weight patches at `lora_strength` (faceid_lora.py), whatever λ is.
    """
    check_model_is_unet(adapter, model)
    diffusion_model = model.get_model_object("diffusion_model")
    layers = cross_attention_layers(diffusion_model)
    check_adapter_fits_model(adapter, layers)
    check_embeds_scaling(options.embeds_scaling)
    check_embeds_fit(embeds, adapter.spec, adapter.source)
    composition_embeds = options.composition_embeds
    if composition_embeds is not None:
        check_embeds_fit(composition_embeds, adapter.spec, adapter.source)
    masks = None
    if options.attn_mask is not None:
        masks = check_mask_fits(options.attn_mask, embeds, composition_embeds, unfold=options.unfold_batch)
    is_per_latent = options.unfold_batch or isinstance(options.weight, tuple)

    def controls_at(weight: float):
        return layer_controls(
            unet_transformer_modules(diffusion_model),
            weight_type=options.weight_type,
            weight=weight,
            composition_weight=float(options.composition_weight),
            block_weights=options.block_weights,
        )

    controls = controls_at(1.0 if is_per_latent else float(options.weight))  # per latent: the routing; λ below
    per_latent = None
    if is_per_latent:
        per_latent = PerLatent(
            weights=options.weight if isinstance(options.weight, tuple) else (float(options.weight),),
            unfold=options.unfold_batch,
            layer_weights=affine_weights(controls, controls_at(0.0)),
        )
    term = ImagePromptTerm(
        **term_basics(model, adapter, weights_patcher, embeds, options),
        controls=controls,
        embeds_scaling=options.embeds_scaling,
        composition_embeds=composition_embeds,
        mask=masks,
        faceid_v2_weight=float(options.faceid_v2_weight),
        per_latent=per_latent,
    )
    patched = model.clone()
    add_faceid_lora(patched, adapter, strength=options.lora_strength)
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for layer in layers:
        patch = placed_patch(
            existing.get(layer.key, existing.get(layer.key[:2])), term, acts=term.acts_on(layer),
            new_patch=lambda base, layer=layer: LayerPatch(layer=layer, terms=(term,), base=base),
        )
        if patch is None:
            continue  # nothing of ours acts here: ComfyUI's own attention (or the other pack's patch) stays
        for key in (layer.key, layer.block_key):  # both keys other packs look up on SD1.5: see layer_map
            if key is not None:
                patched.set_model_attn2_replace(patch, *key)
    add_pass_wrappers(patched)
    copy_patches_on_clone(patched)
    return patched
