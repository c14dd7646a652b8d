"""Apply IPAdapter and Apply IPAdapter (advanced): a clone of the model whose attention also reads the image prompt."""

from comfy_api.latest import io

from ..ipadapter_core.block_weights import check_block_weights_text
from ..ipadapter_core.apply import apply_image_prompt
from ..ipadapter_core.embeds_scaling import EMBEDS_SCALINGS
from ..ipadapter_core.unet.weight_types import WEIGHT_TYPES
from .errors import errors_named_for, first_refusal, one_of
from .types import EmbedsType, IPAdapterType


def common_inputs() -> list:
    """model, ipadapter, embeds, weight, start_at, end_at: the first inputs of both Apply nodes."""
    return [
        io.Model.Input("model", tooltip="The diffusion model (SD1.5, SDXL, Flux or SD3.5 Large, matching the adapter)."),
        IPAdapterType.Input("ipadapter", tooltip="The adapter from Load IPAdapter."),
        EmbedsType.Input("embeds", tooltip="Image-prompt embeds from IPAdapter Encode Image or Combine Embeds."),
        io.Float.Input(
            "weight",
            default=1.0,
            min=-1.0,
            max=5.0,
            step=0.05,
            tooltip="λ, the strength of the image prompt: 0 gives the plain model, 1 the reference's default; around 0.5 "
            "balances image and text prompts. A linked list of numbers (IPAdapter Weights) gives latent j of the batch "
            "the j-th (the last repeats); SD1.5 and SDXL only.",
        ),
        *step_range_inputs(),
    ]


def step_range_inputs() -> list:
    """start_at, end_at: when in the denoising the image prompt acts."""
    return [
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
    ]


def mask_input():
    return io.Mask.Input(
        "attn_mask",
        optional=True,
        tooltip="Where on the picture the image prompt acts (1 = fully, 0 = not at all, soft edges allowed). One "
        "mask for the whole prompt, or one per reference image, each image then acting only in its own mask. M "
        "masks for a multiple of M images: each mask covers that many consecutive images (one softmax), as the "
        "masks of IPAdapter Tiles.",
    )


def faceid_inputs() -> list:
    """faceid_v2_weight, lora_strength: appended to both Apply nodes; only FaceID files read them."""
    return [
        io.Float.Input(
            "faceid_v2_weight",
            default=1.0,
            min=0.0,
            max=5.0,
            step=0.05,
            optional=True,
            tooltip="FaceID PlusV2 only: s, the weight of the face-embedding shortcut (the reference's s_scale). "
            "Other files ignore it.",
        ),
        io.Float.Input(
            "lora_strength",
            default=1.0,
            min=0.0,
            max=2.0,
            step=0.05,
            optional=True,
            tooltip="FaceID files only: the strength of the LoRA inside the file (1 as in the reference, 0 = none). "
            "It acts whatever the weight; a second Apply with the same file adds no second copy.",
        ),
    ]


def unfold_input():
    return io.Boolean.Input(
        "unfold_batch",
        default=False,
        optional=True,
        tooltip="On: reference image j prompts latent j of the batch (animations, a reference per picture; fewer "
        "images than latents: the last repeats), instead of all images as one prompt for every latent. SD1.5 and "
        "SDXL only.",
    )


def apply(model, ipadapter, embeds, **options):
    """The mechanism of the adapter's and the model's family (ipadapter_core/apply.py)."""
    return apply_image_prompt(model, ipadapter.adapter, ipadapter.weights_patcher, embeds, **options)


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
            inputs=[*common_inputs(), mask_input(), *faceid_inputs(), unfold_input()],
            outputs=[io.Model.Output(tooltip="The model with the image prompt; connect it to a sampler.")],
        )

    @classmethod
    def execute(
        cls, model, ipadapter, embeds, weight, start_at, end_at, attn_mask=None, faceid_v2_weight=1.0, lora_strength=1.0,
        unfold_batch=False,
    ) -> io.NodeOutput:  # fmt: skip
        with errors_named_for("Apply IPAdapter"):
            patched = apply(
                model, ipadapter, embeds, weight=weight, start_at=start_at, end_at=end_at, attn_mask=attn_mask,
                faceid_v2_weight=faceid_v2_weight, lora_strength=lora_strength, unfold_batch=unfold_batch,
            )  # fmt: skip
        return io.NodeOutput(patched)


class ApplyIPAdapterAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterApplyAdvanced",
            display_name="Apply IPAdapter (advanced)",
            category="decoupled_ipadapter",
            description=(
                "Apply IPAdapter with a weight per layer: style and composition transfer (weight_type), your own "
                "per-block map (block_weights, as a diffusers scale dict or transformer indexes), where the weight "
                "enters the attention (embeds_scaling), a second reference for the composition layers, and a mask."
            ),
            inputs=[
                *common_inputs(),
                io.Combo.Input(
                    "weight_type",
                    options=list(WEIGHT_TYPES),
                    default="linear",
                    tooltip="How the weight is spread over the UNet's blocks: linear (every layer, the paper), curves "
                    "over the layers, or the style / composition presets (SD1.5, SDXL).",
                ),
                io.Combo.Input(
                    "embeds_scaling",
                    options=list(EMBEDS_SCALINGS),
                    default="V only",
                    tooltip="Where the weight enters: V only (the paper, diffusers), K+V, or K+V with the layer-width "
                    "penalty; K+mean(V) w/ C penalty keeps the image's detail at low weights.",
                ),
                io.String.Input(
                    "block_weights",
                    default="",
                    multiline=True,
                    tooltip='Optional per-block weights, times weight: a diffusers scale dict such as {"up": '
                    '{"block_0": [0.0, 1.0, 0.0]}} (blocks not named get 0), or transformer indexes such as '
                    '"3:1.0, 6:0.5"; on Flux, double-block indexes (InstantX: the double blocks, then the single '
                    'blocks, 0–56). Replaces the weights of weight_type.',
                ),
                mask_input(),
                EmbedsType.Input(
                    "composition_embeds",
                    optional=True,
                    tooltip="A second reference for the composition layers of the style-and-composition types "
                    "(without it they read embeds).",
                ),
                io.Float.Input(
                    "composition_weight",
                    default=1.0,
                    min=-1.0,
                    max=5.0,
                    step=0.05,
                    optional=True,
                    tooltip="The weight of the composition layers in the composition types (c in the docs).",
                ),
                *faceid_inputs(),
                unfold_input(),
            ],
            outputs=[io.Model.Output(tooltip="The model with the image prompt; connect it to a sampler.")],
        )

    @classmethod
    def validate_inputs(cls, weight_type=None, embeds_scaling=None, block_weights=None):
        return first_refusal(
            (weight_type, one_of(WEIGHT_TYPES, input_name="weight_type")),
            (embeds_scaling, one_of(EMBEDS_SCALINGS, input_name="embeds_scaling")),
            (block_weights, check_block_weights_text),
        )

    @classmethod
    def execute(
        cls,
        model,
        ipadapter,
        embeds,
        weight,
        start_at,
        end_at,
        weight_type,
        embeds_scaling,
        block_weights,
        attn_mask=None,
        composition_embeds=None,
        composition_weight=1.0,
        faceid_v2_weight=1.0,
        lora_strength=1.0,
        unfold_batch=False,
    ) -> io.NodeOutput:
        with errors_named_for("Apply IPAdapter (advanced)"):
            patched = apply(
                model,
                ipadapter,
                embeds,
                weight=weight,
                start_at=start_at,
                end_at=end_at,
                weight_type=weight_type,
                embeds_scaling=embeds_scaling,
                block_weights=block_weights,
                attn_mask=attn_mask,
                composition_embeds=composition_embeds,
                composition_weight=composition_weight,
                faceid_v2_weight=faceid_v2_weight,
                lora_strength=lora_strength,
                unfold_batch=unfold_batch,
            )
        return io.NodeOutput(patched)
