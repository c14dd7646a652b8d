"""The Apply entry: the family of the adapter file and of the model picks the patch mechanism that takes the image
prompt (each mechanism refuses what does not fit it, naming the family and what it accepts).

- An SD3.5 adapter file, or an SD3 (MMDiT) model: the joint blocks (`mmdit/`).
- An InstantX Flux adapter file: the double and single blocks (`flux/`).
- An XLabs Flux adapter file, or a Flux model: the double blocks (`flux/`).
- Otherwise the UNet's cross-attention layers (`unet/`).
"""

from .adapter import LoadedAdapter
from .controls import ApplyOptions
from .embeds import ImagePromptEmbeds
from .families import family_blocks
from .flux.apply import apply_flux_image_prompt, apply_instantx_flux_image_prompt
from .flux.format import FLUX_FAMILY, FluxAdapterSpec
from .flux.instantx_format import InstantXFluxSpec
from .mmdit.apply import apply_sd3_image_prompt
from .mmdit.format import SD3_FAMILY, SD3AdapterSpec
from .unet.apply import apply_unet_image_prompt
from .unfold import weight_values


def mechanism_apply(model, adapter: LoadedAdapter):
    """The apply function of the mechanism that takes this adapter on this model."""
    diffusion_model = model.get_model_object("diffusion_model")
    if isinstance(adapter.spec, SD3AdapterSpec) or family_blocks(diffusion_model, SD3_FAMILY) is not None:
        return apply_sd3_image_prompt
    if isinstance(adapter.spec, InstantXFluxSpec):
        return apply_instantx_flux_image_prompt
    if isinstance(adapter.spec, FluxAdapterSpec) or family_blocks(diffusion_model, FLUX_FAMILY) is not None:
        return apply_flux_image_prompt
    return apply_unet_image_prompt


def apply_image_prompt(model, adapter: LoadedAdapter, weights_patcher, embeds: ImagePromptEmbeds, **options):
    """A clone of the ModelPatcher `model` that also attends to the image prompt, through its family's mechanism;
    `options` are the fields of `ApplyOptions` (Apply IPAdapter (advanced)'s inputs); `weight` may be a list (one
    per latent, `weight_values`)."""
    options = ApplyOptions(**{**options, "weight": weight_values(options["weight"])})
    return mechanism_apply(model, adapter)(model, adapter, weights_patcher, embeds, options)
