"""IPAdapter Encode Image: reference images -> the embeds the adapter reads."""

from collections.abc import Callable

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..ipadapter_core.encoding import CROP_MODES, encode_image_prompt
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
                "reference's way) or padded to a square (crop = pad)."
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
    def execute(cls, ipadapter, clip_vision, image, negative_image=None, crop="center") -> io.NodeOutput:
        after_batch = encoding_progress(image.shape[0] + (0 if negative_image is None else negative_image.shape[0]))
        with errors_named_for("IPAdapter Encode Image"):
            adapter = ipadapter.adapter
            embeds = encode_image_prompt(
                clip_vision, adapter.spec, adapter.source, image, negative_image, crop=crop, after_batch=after_batch
            )
        return io.NodeOutput(embeds)
