"""Mixing several image prompts into one, on the CLIP embeddings (before the adapter's projection).

Every input holds N_i images; `e_i` below is one input's `[N_i, …, E]` tensor.
- concat:       all images of all inputs, in input order, become one prompt (`N = Σ N_i`; tokens concatenated,
                one softmax). Negatives are concatenated the same way.
- add:          `e_1 + e_2 + …`
- subtract:     `e_1 − e_2 − …`
- average:      `(e_1 + e_2 + …) / k`
- norm average: per image (and token), the direction is the normalised mean of the inputs' unit vectors (L2 over E)
                and the length is the mean of the inputs' lengths: no input dominates by magnitude, and the result
                keeps the magnitude the projection expects.
For the arithmetic methods all inputs need the same number of images, or one image (used for every image), and the
result's negative is the average of the inputs' negatives (each is the unconditional embedding of its encoder, so
the average stays unconditional).
The result records the adapter variant and image encoder of its inputs: the common one, or all of them joined by
" + " when they differ.
"""

import torch

from .embeds import ImagePromptEmbeds
from .errors import IPAdapterError

METHODS = ("concat", "add", "subtract", "average", "norm average")


def combine_embeds(embeds: list[ImagePromptEmbeds], *, method: str) -> ImagePromptEmbeds:
    if method not in METHODS:
        raise IPAdapterError(f"Unknown combine method '{method}'; use one of {', '.join(METHODS)}.")
    if len(embeds) < 2:
        raise IPAdapterError("Combine Embeds needs at least two embeds connected.")
    first = embeds[0]
    if any(item.face_positive is not None for item in embeds):
        raise IPAdapterError(
            "FaceID Plus embeds (face embeddings with their CLIP crops) cannot be combined here. Give IPAdapter Encode "
            "Face all the pictures in one batch instead: several faces are one image prompt."
        )
    for index, other in enumerate(embeds[1:], start=2):
        if other.clip_output != first.clip_output or other.positive.shape[1:] != first.positive.shape[1:]:
            raise IPAdapterError(
                f"embeds_{index} ({other.clip_output}, shape {list(other.positive.shape[1:])}) cannot be combined with "
                f"embeds_1 ({first.clip_output}, shape {list(first.positive.shape[1:])}): encode every image with the "
                "same IP-Adapter and CLIP vision model."
            )
    sources = dict(
        clip_output=first.clip_output,
        adapter_variant=_joined([item.adapter_variant for item in embeds]),
        image_encoder=_joined([item.image_encoder for item in embeds]),
    )
    if method == "concat":
        return ImagePromptEmbeds(
            positive=torch.cat([item.positive for item in embeds]),
            negative=torch.cat([item.negative for item in embeds]),
            **sources,
        )
    positives = _broadcast([item.positive for item in embeds])
    negatives = _broadcast([item.negative for item in embeds])
    return ImagePromptEmbeds(
        positive=_ARITHMETIC[method](positives), negative=torch.stack(negatives).mean(dim=0), **sources
    )


def _joined(values: list[str]) -> str:
    distinct = list(dict.fromkeys(values))
    return distinct[0] if len(distinct) == 1 else " + ".join(value or "unknown" for value in distinct)


def _broadcast(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    counts = {tensor.shape[0] for tensor in tensors} - {1}
    if len(counts) > 1:
        raise IPAdapterError(
            f"The embeds hold different numbers of images ({sorted(tensor.shape[0] for tensor in tensors)}); "
            "add, subtract and the averages need equal counts or single images. Use concat to join different counts."
        )
    count = counts.pop() if counts else 1
    return [tensor.expand(count, *tensor.shape[1:]) for tensor in tensors]


def _subtract(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] - torch.stack(tensors[1:]).sum(dim=0)


def _norm_average(tensors: list[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack(tensors)  # [k, N, …, E]
    norms = stacked.norm(dim=-1, keepdim=True)  # [k, N, …, 1]
    tiny = torch.finfo(stacked.dtype).tiny
    direction = (stacked / norms.clamp_min(tiny)).mean(dim=0)  # [N, …, E]
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(tiny)
    return direction * norms.mean(dim=0)


_ARITHMETIC = {
    "add": lambda tensors: torch.stack(tensors).sum(dim=0),
    "subtract": _subtract,
    "average": lambda tensors: torch.stack(tensors).mean(dim=0),
    "norm average": _norm_average,
}
