"""IPAdapter Prep Image: which square of a reference the encoder sees, resized and optionally sharpened."""

from comfy_api.latest import io

from ..ipadapter_core.pictures.prep import CROP_POSITIONS, INTERPOLATIONS, PREP_SIZE, prepared_pictures
from .errors import errors_named_for, first_refusal, one_of


class PrepImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterPrepImage",
            display_name="IPAdapter Prep Image",
            category="decoupled_ipadapter",
            description=(
                "Prepares reference pictures for Encode Image: the largest square at crop_position (or the whole "
                "picture padded to a square with black bars), resized to size x size with interpolation, then "
                "contrast-adaptive sharpening (0 = off). Encode Image then sees exactly this square."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The reference pictures."),
                io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="LANCZOS", tooltip="The resize filter (PIL's)."),
                io.Combo.Input(
                    "crop_position",
                    options=list(CROP_POSITIONS),
                    default="center",
                    tooltip="Which square the encoder sees: top, bottom, left, right or center; pad: the whole picture with black bars.",
                ),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05, tooltip="Contrast-adaptive sharpening; 0 = off."),
                io.Int.Input("size", default=PREP_SIZE, min=16, max=2048, step=1, tooltip="The side of the output square; the encoders' input is 224 (ViT-H, ViT-bigG) or 384 (SigLIP)."),
            ],
            outputs=[io.Image.Output(tooltip="The prepared pictures; connect to Encode Image.")],
        )

    @classmethod
    def validate_inputs(cls, interpolation=None, crop_position=None):
        return first_refusal(
            (interpolation, one_of(INTERPOLATIONS, input_name="interpolation")),
            (crop_position, one_of(CROP_POSITIONS, input_name="crop_position")),
        )

    @classmethod
    def execute(cls, image, interpolation, crop_position, sharpening, size) -> io.NodeOutput:
        with errors_named_for("IPAdapter Prep Image"):
            prepared = prepared_pictures(
                image, crop_position=crop_position, interpolation=interpolation, sharpening=sharpening, size=size
            )
        return io.NodeOutput(prepared)
