"""IPAdapter Combine Embeds: several image prompts mixed into one."""

from comfy_api.latest import io

from ..ipadapter_core.combine import METHODS, combine_embeds
from .errors import errors_named_for, one_of, validation_result
from .types import EmbedsType

OPTIONAL_INPUTS = ("embeds_3", "embeds_4", "embeds_5")


class CombineEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterCombineEmbeds",
            display_name="IPAdapter Combine Embeds",
            category="decoupled_ipadapter",
            description=(
                "Mixes two to five image prompts, on the CLIP embeddings before the adapter's projection. "
                "concat: all images become one prompt (tokens concatenated, one softmax). add: e1 + e2 + ... "
                "subtract: e1 - e2 - ... average: (e1 + e2 + ...) / k. norm average: per image, the mean direction "
                "of the unit-length embeddings with the mean length. The arithmetic methods need equal image counts "
                "(or single images); their negative is the average of the inputs' negatives."
            ),
            inputs=[
                EmbedsType.Input("embeds_1", tooltip="First image prompt (the one others are subtracted from)."),
                EmbedsType.Input("embeds_2", tooltip="Second image prompt."),
                io.Combo.Input("method", options=list(METHODS), default="concat", tooltip="How to mix them; see the node description."),
                *(EmbedsType.Input(name, optional=True, tooltip="Another image prompt (optional).") for name in OPTIONAL_INPUTS),
            ],
            outputs=[EmbedsType.Output(display_name="embeds", tooltip="The combined image-prompt embeds.")],
        )

    @classmethod
    def validate_inputs(cls, method=None):
        return validation_result(method, one_of(METHODS, input_name="method"))

    @classmethod
    def execute(cls, embeds_1, embeds_2, method, embeds_3=None, embeds_4=None, embeds_5=None) -> io.NodeOutput:
        inputs = [item for item in (embeds_1, embeds_2, embeds_3, embeds_4, embeds_5) if item is not None]
        with errors_named_for("IPAdapter Combine Embeds"):
            return io.NodeOutput(combine_embeds(inputs, method=method))
