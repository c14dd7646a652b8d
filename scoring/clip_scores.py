"""The IP-Adapter paper's quantitative scores (Ye et al., 2023, section 4.2), computed with an OpenCLIP model.

- CLIP-I: the cosine similarity of the CLIP image embeddings of the generated image and of the image prompt.
- CLIP-T: the CLIPScore of the generated image against a caption. CLIPScore (Hessel et al., 2021, "CLIPScore: A
  Reference-free Evaluation Metric for Image Captioning") is CLIP-S(c, v) = w * max(cos(c, v), 0) with w = 2.5,
  c the caption's text embedding and v the image embedding. The paper reports CLIP-T around 0.5-0.6 with ViT-L/14,
  the range of 2.5 * cos for matching image-caption pairs (their raw cosines are about 0.2-0.35), so w = 2.5 is
  used here; the raw cosine is reported beside it (`clip_t_cosine`) for comparison with tools that report 100 * cos.
Both cosines are of the projected embeddings (image_embeds, text features); CLIP-I is symmetric in its two images,
CLIP-T is not a comparison of like with like and has no such symmetry.
"""

from dataclasses import dataclass

import torch

from ..ipadapter_core.encoders import IMAGE_EMBEDS
from ..ipadapter_core.encoding import ENCODE_BATCH_SIZE, encode_images
from ..ipadapter_core.errors import IPAdapterError

CLIPSCORE_WEIGHT = 2.5


def cosine_similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two `[N, E]` batches (fp32) -> `[N]`."""
    first, second = first.float(), second.float()
    return torch.nn.functional.cosine_similarity(first, second, dim=-1, eps=1e-12)


def clip_i(generated_embeds: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
    """CLIP-I of `[N, E]` image embeddings against `[N, E]` image-prompt embeddings -> `[N]`, in [-1, 1]."""
    return cosine_similarity(generated_embeds, prompt_embeds)


def clip_score(cosine: torch.Tensor, *, weight: float = CLIPSCORE_WEIGHT) -> torch.Tensor:
    """CLIPScore from the image-caption cosine: `weight * max(cos, 0)`."""
    return weight * cosine.clamp(min=0.0)


@dataclass(frozen=True)
class Scores:
    """Per generated image: CLIP-I, and (with a caption) CLIP-T and its raw cosine; `None` where not computed."""

    clip_i: torch.Tensor  # [N]
    clip_t: torch.Tensor | None  # [N]
    clip_t_cosine: torch.Tensor | None  # [N]


def paired_prompts(prompt_embeds: torch.Tensor, count: int, where: str) -> torch.Tensor:
    """One image prompt for every generated image, or one each: `[1 or N, E]` -> `[N, E]`."""
    if prompt_embeds.shape[0] == count:
        return prompt_embeds
    if prompt_embeds.shape[0] == 1:
        return prompt_embeds.expand(count, -1)
    raise IPAdapterError(
        f"{where}: {count} generated images but {prompt_embeds.shape[0]} image prompts. Give one image prompt for "
        "all of them, or one per generated image, in the same order."
    )


def scores_of_embeddings(
    generated_embeds: torch.Tensor, prompt_embeds: torch.Tensor, caption_embeds: torch.Tensor | None, *, where: str
) -> Scores:
    """`generated_embeds` [N, E]; `prompt_embeds` [1 or N, E]; `caption_embeds` [1 or N, E] or None."""
    count = generated_embeds.shape[0]
    similarity = clip_i(generated_embeds, paired_prompts(prompt_embeds, count, where))
    if caption_embeds is None:
        return Scores(clip_i=similarity, clip_t=None, clip_t_cosine=None)
    if caption_embeds.shape[-1] != generated_embeds.shape[-1]:
        raise IPAdapterError(
            f"{where}: the image embeddings are {generated_embeds.shape[-1]} wide but the caption's are "
            f"{caption_embeds.shape[-1]}: the image and text towers are not from one CLIP model."
        )
    caption_embeds = caption_embeds.expand(count, -1) if caption_embeds.shape[0] == 1 else caption_embeds
    cosine = cosine_similarity(generated_embeds, caption_embeds)
    return Scores(clip_i=similarity, clip_t=clip_score(cosine), clip_t_cosine=cosine)


def score_images(model, generated: torch.Tensor, image_prompt: torch.Tensor, caption: str, *, where: str) -> Scores:
    """Scores of an IMAGE batch `[N, H, W, C]` against an image prompt `[1 or N, H, W, C]` and one caption (empty:
    CLIP-I only) with an `OpenCLIPModel` (openclip/model.py)."""
    from ..openclip.model import require_text_tower

    generated_embeds = embed_images(model.vision, generated)
    prompt_embeds = embed_images(model.vision, image_prompt)
    caption_embeds = None
    if caption.strip():
        caption_embeds = require_text_tower(model, where).encode_text([caption])  # [1, E]
    return scores_of_embeddings(generated_embeds, prompt_embeds, caption_embeds, where=where)


def embed_images(vision, images: torch.Tensor, *, batch_size: int = ENCODE_BATCH_SIZE) -> torch.Tensor:
    """CLIP image embeddings of an IMAGE batch `[N, H, W, C]` -> `[N, E]` (fp32), `batch_size` images per call."""
    return encode_images(vision, images, clip_output=IMAGE_EMBEDS, batch_size=batch_size).float()
