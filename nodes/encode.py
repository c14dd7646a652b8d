"""IPAdapter Encode Image: reference images -> the embeds the adapter reads."""

from collections.abc import Callable

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..ipadapter_core.encoding import CROP_MODES, encode_image_prompt
from ..ipadapter_core.enhancer import MAX_TILES
from .errors import errors_named_for, one_of, validation_result
from .types import EmbedsType, IPAdapterType


def encoding_progress(total: int) -> Callable[[int], None]:
    """The `after_batch` callback of an encoding of `total` pictures: the node's progress bar, and a cancel between
    batches (checked once before the first as well)."""
    comfy.model_management.throw_exception_if_processing_interrupted()
    progress = comfy.utils.ProgressBar(total)

    def after_batch(count: int) -> None:
        progress.update(count)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return after_batch


class EncodeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterEncode",
            display_name="IPAdapter Encode Image",
            category="decoupled_ipadapter",
            description=(
                "Encodes reference images with the CLIP vision model into image-prompt embeds: image embeds for "
                "base adapters, the penultimate hidden states for plus and full-face adapters. All images of the "
                "batch form one image prompt. Without a negative image the negative is the reference's "
                "unconditional embedding. Pictures that are not square are centre-cropped (crop = center, the "
                "reference's way) or padded to a square (crop = pad). weight scales the embeds; enhance_tiles > 1 "
                "also reads each picture in tiles and mixes that reading in (the encoder enhancer)."
            ),
            inputs=[
                IPAdapterType.Input("ipadapter", tooltip="The adapter from Load IPAdapter; it decides which CLIP output is read."),
                io.ClipVision.Input(
                    "clip_vision",
                    tooltip="The image encoder the adapter was trained with (ViT-H for most files, ViT-bigG for ip-adapter_sdxl and ip-adapter_sd15_vit-G).",
                ),
                io.Image.Input("image", tooltip="One or more reference images; 'crop' says how a picture that is not square is fitted."),
                io.Image.Input(
                    "negative_image",
                    optional=True,
                    tooltip="Optional: what the image prompt should move away from (one image, or as many as 'image').",
                ),
                io.Combo.Input(
                    "crop",
                    options=list(CROP_MODES),
                    default="center",
                    optional=True,
                    tooltip=(
                        "How a picture that is not square fits the encoder's square input. center: the middle square "
                        "(the reference's preprocessing; the edges of the long side are cut off). pad: the whole "
                        "picture, padded to a square with the encoder's mean colour (which normalises to zero). With "
                        "the InstantX FLUX.1-dev adapter, center resizes the whole picture to 384², as its reference "
                        "does."
                    ),
                ),
                io.Float.Input(
                    "weight",
                    default=1.0,
                    min=-1.0,
                    max=3.0,
                    step=0.01,
                    optional=True,
                    tooltip=(
                        "Scales the image embeds (the negative is not scaled): weigh several references against each "
                        "other before Combine Embeds. 1 leaves them as encoded."
                    ),
                ),
                io.Int.Input(
                    "enhance_tiles",
                    default=1,
                    min=1,
                    max=MAX_TILES,
                    optional=True,
                    tooltip=(
                        "The encoder enhancer: each picture is also cut into enhance_tiles × enhance_tiles tiles, "
                        "each encoded at the encoder's resolution; their readings are stitched together and pooled "
                        "back to one picture's size (finer detail). 1: off, the plain encoding. CLIP ViT-H / ViT-bigG "
                        "only (not SigLIP; not the base ViT-bigG adapters' image embeds)."
                    ),
                ),
                io.Float.Input(
                    "enhance_ratio",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    optional=True,
                    tooltip=(
                        "How the whole picture's reading mixes with the tiles' (with enhance_tiles > 1). One picture: "
                        "both are kept as two images of the prompt, the whole one scaled by enhance_ratio. Several "
                        "pictures: per picture, whole × enhance_ratio + tiles × (1 − enhance_ratio)."
                    ),
                ),
            ],
            outputs=[
                EmbedsType.Output(
                    display_name="embeds",
                    tooltip="Positive and negative image-prompt embeds; connect to Apply IPAdapter or Combine Embeds.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, crop=None):
        return validation_result(crop, one_of(CROP_MODES, input_name="crop"))

    @classmethod
    def execute(
        cls,
        ipadapter,
        clip_vision,
        image,
        negative_image=None,
        crop="center",
        weight=1.0,
        enhance_tiles=1,
        enhance_ratio=1.0,
    ) -> io.NodeOutput:
        tile_count = 0 if enhance_tiles == 1 else enhance_tiles * enhance_tiles
        after_batch = encoding_progress(
            image.shape[0] * (1 + tile_count) + (0 if negative_image is None else negative_image.shape[0])
        )
        with errors_named_for("IPAdapter Encode Image"):
            adapter = ipadapter.adapter
            embeds = encode_image_prompt(
                clip_vision,
                adapter.spec,
                adapter.source,
                image,
                negative_image,
                crop=crop,
                weight=weight,
                enhance_tiles=enhance_tiles,
                enhance_ratio=enhance_ratio,
                after_batch=after_batch,
            )
        return io.NodeOutput(embeds)
