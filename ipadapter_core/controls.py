"""What an image-prompt term does at one layer or block of any mechanism: the controls' data type."""

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerControl:
    weight: float  # the layer's λ (before embeds scaling); 0: leave the layer unpatched
    embeds: str = "main"  # whose image tokens the layer reads: "main" (embeds) or "composition" (composition_embeds)
    swap_cond_uncond: bool = False  # precise: the unconditional pass reads the image tokens, the conditional none
