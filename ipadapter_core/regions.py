"""Regional conditioning: image prompts, each confined to a region of the picture, applied together.

A `Region` is one image prompt with everything Apply IPAdapter (advanced) needs for it but the embeds scaling: the
reference images (encoded later, when the model and adapter are known), λ, the weight type, the step range and the
mask. A params bundle is a tuple of regions, in the order they were combined; `apply_regions` puts every region on
the model as one more stacked term, exactly as a chain of Apply IPAdapter (advanced) nodes would.

The text side of a region (`masked_conditioning`) is ComfyUI's conditioning mask, as core's ConditioningSetMask sets
it with set_cond_area = default: the prompt acts inside the mask, at `mask_strength` = the region's prompt weight.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .combine import METHODS, combine_embeds
from .embeds import ImagePromptEmbeds
from .errors import IPAdapterError
from .masks import mask_batch
from .schedule import check_step_range


@dataclass(frozen=True, eq=False)
class Region:
    images: torch.Tensor  # [N, H, W, C] IMAGE: the region's reference images, one image prompt
    weight: float  # λ
    weight_type: str
    start_at: float
    end_at: float
    mask: torch.Tensor | None = None  # [M, H, W] with M = 1 or N; None: the whole picture


def region_params(
    images: torch.Tensor, *, weight: float, weight_type: str, start_at: float, end_at: float, mask: torch.Tensor | None
) -> tuple[Region]:
    """A params bundle of one region; the mask holds one mask, or one per reference image. A bad step range or mask
    count is refused here, where the region is made."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise IPAdapterError(f"image has shape {list(images.shape)}; connect an IMAGE batch of at least one picture.")
    check_step_range(start_at=start_at, end_at=end_at)
    masks = None
    if mask is not None:
        masks = mask_batch(mask)  # [M, H, W]
        if masks.shape[0] not in (1, images.shape[0]):
            raise IPAdapterError(
                f"mask holds {masks.shape[0]} masks but image holds {images.shape[0]} pictures. Give one mask (the "
                "region of the whole image prompt), or one mask per picture, in the same order."
            )
    region = Region(
        images=images, weight=float(weight), weight_type=weight_type, start_at=float(start_at), end_at=float(end_at), mask=masks
    )
    return (region,)


def combined_params(bundles: Sequence[tuple[Region, ...] | None]) -> tuple[Region, ...]:
    """The regions of every connected bundle, in input order (unconnected inputs, None, are skipped)."""
    return tuple(region for bundle in bundles if bundle is not None for region in bundle)


def masked_conditioning(conditioning, mask: torch.Tensor | None, *, strength: float):
    """The text conditioning confined to the region's mask `[M, H, W]`: ComfyUI's mask entries set on every cond, as
    ConditioningSetMask sets them (set_cond_area = default). Unconnected (None) stays None; without a mask it passes
    unchanged."""
    if conditioning is None or mask is None:
        return conditioning
    import node_helpers

    values = {"mask": mask, "set_area_to_bounds": False, "mask_strength": float(strength)}
    return node_helpers.conditioning_set_values(conditioning, values)


def region_embeds(embeds: ImagePromptEmbeds, *, method: str) -> ImagePromptEmbeds:
    """The image prompt of a region's N pictures: concat keeps them side by side (one softmax); the other methods of
    combine.py mix the N pictures into one."""
    if method not in METHODS:
        raise IPAdapterError(f"Unknown combine_embeds '{method}'; use one of {', '.join(METHODS)}.")
    if method == "concat" or embeds.image_count == 1:
        return embeds
    per_picture = [
        ImagePromptEmbeds(
            positive=embeds.positive[index : index + 1],  # [1, …, E]
            negative=embeds.negative[index : index + 1],
            clip_output=embeds.clip_output,
            adapter_variant=embeds.adapter_variant,
            image_encoder=embeds.image_encoder,
        )
        for index in range(embeds.image_count)
    ]
    return combine_embeds(per_picture, method=method)


def check_region_mask_fits(region: Region, embeds: ImagePromptEmbeds) -> None:
    """A mask per picture needs the pictures kept apart: it cannot follow pictures mixed into one."""
    if region.mask is not None and region.mask.shape[0] not in (1, embeds.image_count):
        raise IPAdapterError(
            f"its mask holds one mask per picture ({region.mask.shape[0]}), but combine_embeds mixed the pictures into "
            f"{embeds.image_count}. Use combine_embeds = concat to keep a mask per picture, or give the region one mask."
        )


def apply_regions(
    model,
    regions: Sequence[Region],
    *,
    encode: Callable[[torch.Tensor], ImagePromptEmbeds],
    apply: Callable[..., object],
    combine_method: str,
    embeds_scaling: str,
):
    """The ModelPatcher `model` with every region's image prompt stacked on it, in order, as Apply IPAdapter
    (advanced) nodes in a chain would put them. `encode(images)` turns a region's pictures into embeds; `apply(model,
    embeds, **options)` puts one image prompt on a model (`ApplyOptions` fields). An error names the region (1-based)."""
    if not regions:
        raise IPAdapterError("ipadapter_params holds no region. Connect IPAdapter Regional Conditioning (or Combine Params).")
    patched = model
    for number, region in enumerate(regions, start=1):
        try:
            embeds = region_embeds(encode(region.images), method=combine_method)
            check_region_mask_fits(region, embeds)
            patched = apply(
                patched, embeds, weight=region.weight, weight_type=region.weight_type, start_at=region.start_at,
                end_at=region.end_at, attn_mask=region.mask, embeds_scaling=embeds_scaling,
            )  # fmt: skip
        except IPAdapterError as error:
            raise IPAdapterError(f"region {number} of {len(regions)}: {error}") from error
    return patched
