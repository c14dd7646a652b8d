"""CLIP-I / CLIP-T Scores: the paper's two numbers for generated images, shown on the node and given as FLOATs."""

from comfy_api.latest import io, ui

from ..scoring.clip_scores import Scores, score_images
from .errors import errors_named_for
from .openclip_loader import OpenCLIPType

DISPLAY_NAME = "CLIP-I / CLIP-T Scores"


def scores_text(scores: Scores) -> str:
    """One line per image and the mean, as the node shows them."""

    def line(label: str, index: int | None) -> str:
        pick = (lambda values: values.mean()) if index is None else (lambda values: values[index])
        text = f"{label}: CLIP-I {pick(scores.clip_i).item():.4f}"
        if scores.clip_t is not None:
            text += f"  CLIP-T {pick(scores.clip_t).item():.4f} (cos {pick(scores.clip_t_cosine).item():.4f})"
        return text

    count = scores.clip_i.shape[0]
    lines = [line(f"image {index + 1}", index) for index in range(count)] if count > 1 else []
    return "\n".join([*lines, line("mean" if count > 1 else "image", None)])


class CLIPScores(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterCLIPScores",
            display_name=DISPLAY_NAME,
            category="decoupled_ipadapter",
            description=(
                "Scores generated images as the IP-Adapter paper does (section 4.2): CLIP-I, the cosine of the CLIP "
                "image embeddings of each generated image and the image prompt; CLIP-T, the CLIPScore "
                "2.5 * max(cos, 0) of each generated image and the caption (its raw cosine too). Shown on the node; "
                "the outputs are the means over the batch."
            ),
            inputs=[
                OpenCLIPType.Input("openclip", tooltip="The scoring model from Load OpenCLIP Model (the paper used ViT-L-14)."),
                io.Image.Input("generated", tooltip="The generated images (a batch is scored image by image)."),
                io.Image.Input(
                    "image_prompt",
                    tooltip="The reference image: one for all generated images, or one per generated image, in order.",
                ),
                io.String.Input(
                    "caption",
                    multiline=True,
                    default="",
                    tooltip="The caption CLIP-T compares with (e.g. the image prompt's caption); empty: CLIP-I only.",
                ),
            ],
            outputs=[
                io.Float.Output(display_name="clip_i", tooltip="Mean CLIP-I over the batch, in [-1, 1]."),
                io.Float.Output(display_name="clip_t", tooltip="Mean CLIP-T (CLIPScore, 2.5 * max(cos, 0)); 0 without a caption."),
                io.Float.Output(display_name="clip_t_cosine", tooltip="Mean raw image-caption cosine; 0 without a caption."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, openclip, generated, image_prompt, caption) -> io.NodeOutput:
        with errors_named_for(DISPLAY_NAME):
            scores = score_images(openclip, generated, image_prompt, caption, where=f"'{openclip.source}'")
        mean_t = 0.0 if scores.clip_t is None else scores.clip_t.mean().item()
        mean_cosine = 0.0 if scores.clip_t_cosine is None else scores.clip_t_cosine.mean().item()
        return io.NodeOutput(
            scores.clip_i.mean().item(), mean_t, mean_cosine, ui=ui.PreviewText(scores_text(scores))
        )
