"""IPAdapter Regional Conditioning, IPAdapter Combine Params and Apply IPAdapter from Params: image prompts (with their
text prompts) confined to regions of the picture, bundled, then applied together."""

from comfy_api.latest import io

from ..ipadapter_core.combine import METHODS
from ..ipadapter_core.embeds_scaling import EMBEDS_SCALINGS
from ..ipadapter_core.encoding import CROP_MODES, encode_image_prompt
from ..ipadapter_core.regions import apply_regions, combined_params, masked_conditioning, region_params
from ..ipadapter_core.unet.weight_types import WEIGHT_TYPES
from .apply import apply, step_range_inputs
from .encode import encoding_progress
from .errors import errors_named_for, first_refusal, one_of, validation_result
from .types import IPAdapterType, ParamsType

OPTIONAL_PARAMS = ("params_3", "params_4", "params_5")


class RegionalConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterRegionalConditioning",
            display_name="IPAdapter Regional Conditioning",
            category="decoupled_ipadapter",
            description=(
                "One region of the picture: an image prompt with its weight, weight type, step range and mask, "
                "bundled for Apply IPAdapter from Params, and the text prompts confined to the same mask (ComfyUI's "
                "conditioning mask, at prompt_weight, as Conditioning (Set Mask) does). Bundles of several regions "
                "are joined with IPAdapter Combine Params."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The region's reference images; several images are one image prompt."),
                io.Float.Input(
                    "image_weight", default=1.0, min=-1.0, max=3.0, step=0.05,
                    tooltip="λ, the strength of the region's image prompt (the weight of Apply IPAdapter).",
                ),  # fmt: skip
                io.Float.Input(
                    "prompt_weight", default=1.0, min=0.0, max=10.0, step=0.05,
                    tooltip="The strength of the text prompts inside the mask (the strength of Conditioning (Set Mask)).",
                ),  # fmt: skip
                io.Combo.Input(
                    "weight_type", options=list(WEIGHT_TYPES), default="linear",
                    tooltip="How the image weight is spread over the UNet's blocks, as in Apply IPAdapter (advanced).",
                ),  # fmt: skip
                *step_range_inputs(),
                io.Mask.Input(
                    "mask", optional=True,
                    tooltip="The region (1 = inside, soft edges allowed): one mask, or one per reference image. "
                    "Without it the image prompt acts everywhere and the text prompts pass unchanged.",
                ),  # fmt: skip
                io.Conditioning.Input("positive", optional=True, tooltip="The region's positive text prompt (optional)."),
                io.Conditioning.Input("negative", optional=True, tooltip="The region's negative text prompt (optional)."),
            ],
            outputs=[
                ParamsType.Output(
                    display_name="ipadapter_params", tooltip="The region; connect to Combine Params or Apply IPAdapter from Params."
                ),
                io.Conditioning.Output(
                    display_name="positive", tooltip="The positive prompt confined to the mask (nothing if not connected)."
                ),
                io.Conditioning.Output(
                    display_name="negative", tooltip="The negative prompt confined to the mask (nothing if not connected)."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, weight_type=None):
        return validation_result(weight_type, one_of(WEIGHT_TYPES, input_name="weight_type"))

    @classmethod
    def execute(
        cls, image, image_weight, prompt_weight, weight_type, start_at, end_at, mask=None, positive=None, negative=None
    ) -> io.NodeOutput:
        with errors_named_for("IPAdapter Regional Conditioning"):
            params = region_params(
                image, weight=image_weight, weight_type=weight_type, start_at=start_at, end_at=end_at, mask=mask
            )
            region_mask = params[0].mask
            return io.NodeOutput(
                params,
                masked_conditioning(positive, region_mask, strength=prompt_weight),
                masked_conditioning(negative, region_mask, strength=prompt_weight),
            )


class CombineParams(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterCombineParams",
            display_name="IPAdapter Combine Params",
            category="decoupled_ipadapter",
            description="Joins two to five region bundles into one, in input order (params_1's regions first).",
            inputs=[
                ParamsType.Input("params_1", tooltip="The first regions."),
                ParamsType.Input("params_2", tooltip="The next regions."),
                *(ParamsType.Input(name, optional=True, tooltip="More regions (optional).") for name in OPTIONAL_PARAMS),
            ],
            outputs=[ParamsType.Output(display_name="ipadapter_params", tooltip="All the regions, in order.")],
        )

    @classmethod
    def execute(cls, params_1, params_2, params_3=None, params_4=None, params_5=None) -> io.NodeOutput:
        return io.NodeOutput(combined_params([params_1, params_2, params_3, params_4, params_5]))


class ApplyFromParams(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterFromParams",
            display_name="Apply IPAdapter from Params",
            category="decoupled_ipadapter",
            description=(
                "Encodes each region's reference images and applies its image prompt with its weight, weight type, "
                "step range and mask, all regions stacked on one patched copy of the model: the same as an IPAdapter "
                "Encode Image and an Apply IPAdapter (advanced) per region, in a chain."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (matching the adapter)."),
                IPAdapterType.Input("ipadapter", tooltip="The adapter from Load IPAdapter."),
                io.ClipVision.Input("clip_vision", tooltip="The image encoder the adapter was trained with."),
                ParamsType.Input("ipadapter_params", tooltip="The regions, from Regional Conditioning or Combine Params."),
                io.Combo.Input(
                    "combine_embeds", options=list(METHODS), default="concat",
                    tooltip="How the images of one region make its image prompt: concat keeps them side by side (one "
                    "softmax); add, subtract, average and norm average mix them into one, as Combine Embeds does.",
                ),  # fmt: skip
                io.Combo.Input(
                    "embeds_scaling", options=list(EMBEDS_SCALINGS), default="V only",
                    tooltip="Where the weight enters the attention, as in Apply IPAdapter (advanced).",
                ),  # fmt: skip
                io.Image.Input(
                    "image_negative", optional=True,
                    tooltip="Optional: what every region's image prompt moves away from (one image, or as many as "
                    "each region's images).",
                ),  # fmt: skip
                io.Combo.Input(
                    "crop", options=list(CROP_MODES), default="center", optional=True,
                    tooltip="How a picture that is not square is fitted, as in IPAdapter Encode Image.",
                ),  # fmt: skip
            ],
            outputs=[io.Model.Output(tooltip="The model with every region's image prompt; connect it to a sampler.")],
        )

    @classmethod
    def validate_inputs(cls, combine_embeds=None, embeds_scaling=None, crop=None):
        return first_refusal(
            (combine_embeds, one_of(METHODS, input_name="combine_embeds")),
            (embeds_scaling, one_of(EMBEDS_SCALINGS, input_name="embeds_scaling")),
            (crop, one_of(CROP_MODES, input_name="crop")),
        )

    @classmethod
    def execute(
        cls, model, ipadapter, clip_vision, ipadapter_params, combine_embeds, embeds_scaling, image_negative=None, crop="center"
    ) -> io.NodeOutput:
        negatives = 0 if image_negative is None else image_negative.shape[0]
        after_batch = encoding_progress(sum(region.images.shape[0] + negatives for region in ipadapter_params))
        adapter = ipadapter.adapter

        def encode(images):
            return encode_image_prompt(
                clip_vision, adapter.spec, adapter.source, images, image_negative, crop=crop, after_batch=after_batch
            )

        def apply_one(patched, embeds, **options):
            return apply(patched, ipadapter, embeds, **options)

        with errors_named_for("Apply IPAdapter from Params"):
            patched = apply_regions(
                model, ipadapter_params, encode=encode, apply=apply_one, combine_method=combine_embeds,
                embeds_scaling=embeds_scaling,
            )  # fmt: skip
        return io.NodeOutput(patched)
