"""Apply IPAdapter: a clone of the model whose cross-attention also attends to the image prompt (λ = weight)."""

from comfy_api.latest import io

from ..ipadapter_core.dit.apply import apply_dit_image_prompt, is_dit_application
from ..ipadapter_core.unet.apply import apply_image_prompt
from .errors import errors_named_for
from .types import EmbedsType, IPAdapterType


class ApplyIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterApply",
            display_name="Apply IPAdapter",
            category="decoupled_ipadapter",
            description=(
                "Adds the image prompt to every cross-attention layer: out = Attn(Q, K, V) + weight * Attn(Q, K', V'), "
                "as in the IP-Adapter paper. Returns a patched copy; the input model is not changed. Several Apply "
                "nodes in a row add their image prompts."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.5 or SDXL, matching the adapter)."),
                IPAdapterType.Input("ipadapter", tooltip="The adapter from Load IPAdapter."),
                EmbedsType.Input("embeds", tooltip="Image-prompt embeds from IPAdapter Encode Image or Combine Embeds."),
                io.Float.Input(
                    "weight",
                    default=1.0,
                    min=-1.0,
                    max=5.0,
                    step=0.05,
                    tooltip="λ, the strength of the image prompt: 0 gives the plain model, 1 the reference's default; around 0.5 balances image and text prompts.",
                ),
                io.Float.Input(
                    "start_at",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="Fraction of the denoising at which the image prompt starts acting (0 = from the first step).",
                ),
                io.Float.Input(
                    "end_at",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="Fraction of the denoising at which it stops acting (1 = until the last step).",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with the image prompt; connect it to a sampler.")],
        )

    @classmethod
    def execute(cls, model, ipadapter, embeds, weight, start_at, end_at) -> io.NodeOutput:
        with errors_named_for("Apply IPAdapter"):
            dit = is_dit_application(model, ipadapter.adapter)
            patched = (apply_dit_image_prompt if dit else apply_image_prompt)(
                model,
                ipadapter.adapter,
                ipadapter.weights_patcher,
                embeds,
                weight=weight,
                start_at=start_at,
                end_at=end_at,
            )
        return io.NodeOutput(patched)
