"""The Apply IPAdapter (advanced) options a Flux or SD3.5 reference has no counterpart for: refused, not ignored."""

from .errors import IPAdapterError


def refuse_unet_options(
    family: str,
    *,
    weight_type: str,
    embeds_scaling: str,
    attn_mask,
    composition_embeds,
    composition_weight: float,
    block_weights: str | None,
    takes: str,
) -> None:
    """Raise an IPAdapterError naming every option set to something `family` does not take, and what it does take
    (`takes`). `block_weights` is None where the family takes it."""
    refused = [
        f"weight_type '{weight_type}' (UNet blocks)" * (weight_type != "linear"),
        f"embeds_scaling '{embeds_scaling}'" * (embeds_scaling != "V only"),
        f'block_weights "{block_weights}"' * bool(block_weights is not None and block_weights.strip()),
        "attn_mask" * (attn_mask is not None),
        "composition_embeds" * (composition_embeds is not None),
        f"composition_weight {composition_weight:g}" * (composition_weight != 1.0),
    ]
    refused = [item for item in refused if item]
    if refused:
        raise IPAdapterError(f"The {family} IP-Adapter does not take {', '.join(refused)}. On {family} use {takes}.")
