"""The controls' data types, shared by every mechanism: what Apply asks for (`ApplyOptions`) and what an image-prompt
term does at one layer or block (`LayerControl`)."""

from dataclasses import dataclass

import torch

from .embeds import ImagePromptEmbeds


@dataclass(frozen=True)
class ApplyOptions:
    """The inputs of Apply IPAdapter (advanced); Apply IPAdapter leaves the advanced ones at their defaults."""

    weight: float | tuple[float, ...]  # λ, or one per latent (unfold.py; a list of one is given as its number)
    start_at: float  # the fraction of the denoising where the prompt starts acting
    end_at: float  # … and where it stops
    weight_type: str = "linear"
    embeds_scaling: str = "V only"
    block_weights: str = ""
    attn_mask: torch.Tensor | None = None  # a ComfyUI MASK
    composition_embeds: ImagePromptEmbeds | None = None
    composition_weight: float = 1.0
    faceid_v2_weight: float = 1.0  # FaceID PlusV2's s; other files ignore it
    lora_strength: float = 1.0  # the FaceID LoRA inside the adapter file; 0: none
    unfold_batch: bool = False  # latent j reads reference image j (unfold.py), not all images as one prompt


@dataclass(frozen=True)
class LayerControl:
    weight: float  # the layer's λ (before embeds scaling); 0: leave the layer unpatched
    embeds: str = "main"  # whose image tokens the layer reads: "main" (embeds) or "composition" (composition_embeds)
    swap_cond_uncond: bool = False  # precise: the unconditional pass reads the image tokens, the conditional none
