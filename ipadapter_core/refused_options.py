"""The Apply IPAdapter (advanced) options a Flux or SD3.5 reference has no counterpart for: refused, not ignored."""

from .controls import ApplyOptions
from .errors import IPAdapterError


def refuse_unet_options(family: str, options: ApplyOptions, *, takes_block_weights: bool, takes: str) -> None:
    """Raise an IPAdapterError naming every option set to something `family` does not take, and what it does take
    (`takes`)."""
    refused = [
        f"weight_type '{options.weight_type}' (UNet blocks)" * (options.weight_type != "linear"),
        f"embeds_scaling '{options.embeds_scaling}'" * (options.embeds_scaling != "V only"),
        f'block_weights "{options.block_weights}"' * bool(not takes_block_weights and options.block_weights.strip()),
        "attn_mask" * (options.attn_mask is not None),
        "composition_embeds" * (options.composition_embeds is not None),
        f"composition_weight {options.composition_weight:g}" * (options.composition_weight != 1.0),
        "unfold_batch (UNet only)" * options.unfold_batch,
        "a list of weights in weight (UNet only)" * isinstance(options.weight, tuple),
    ]
    refused = [item for item in refused if item]
    if refused:
        raise IPAdapterError(f"The {family} IP-Adapter does not take {', '.join(refused)}. On {family} use {takes}.")
