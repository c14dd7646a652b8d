"""Image-prompt embeds: the CLIP image encoder's output for the reference images, before the adapter's projection.

`positive` holds one row per reference image; `negative` is what the reference uses for the unconditional pass
(a zero embedding for base adapters; the encoder run on an all-zero normalised pixel tensor for plus/full-face).
Several images in one embeds are one image prompt: their tokens are concatenated into one softmax.
They also record where they came from (the adapter variant and the image encoder they were encoded for), which
saved embeds files keep and error messages quote; empty when unknown.
FaceID embeds (IPAdapter Encode Face): FaceID and Portrait hold the InsightFace embeddings as `positive` (`[N, 512]`,
clip_output "face_embedding", negative zeros); FaceID Plus holds the CLIP hidden states of the face crops as
`positive` and the face embeddings beside them (`face_positive`, `face_negative`), since its projection reads both.
"""

from dataclasses import dataclass

import torch

from .encoders import (
    ENCODER_FILES,
    ENCODER_HIDDEN_DIM,
    ENCODER_IMAGE_EMBEDS_DIM,
    FACE_EMBEDDING,
    IMAGE_EMBEDS,
    PENULTIMATE,
    SIGLIP_POOLED,
    EncoderReadingSpec,
)
from .errors import IPAdapterError


@dataclass(frozen=True, eq=False)
class ImagePromptEmbeds:
    positive: torch.Tensor  # [N, E] image embeds, SigLIP's pooled output or face embeddings, or [N, S, E] penultimate hidden states
    negative: torch.Tensor  # same shape as positive
    clip_output: str  # "image_embeds" | "penultimate_hidden_states" | "siglip_pooled_output" | "face_embedding"
    adapter_variant: str = ""  # the adapter they were encoded for, e.g. "ip-adapter-plus_sd15"
    image_encoder: str = ""  # the encoder that made them: "ViT-H" | "ViT-bigG"
    face_positive: torch.Tensor | None = None  # FaceID Plus: [N, 512] face embeddings beside the CLIP rows
    face_negative: torch.Tensor | None = None  # [N, 512] zeros

    @property
    def width(self) -> int:
        return self.positive.shape[-1]

    @property
    def image_count(self) -> int:
        return self.positive.shape[0]


def encoder_of_width(clip_output: str, width: int) -> str:
    table = ENCODER_IMAGE_EMBEDS_DIM if clip_output == IMAGE_EMBEDS else ENCODER_HIDDEN_DIM
    for encoder, encoder_width in table.items():
        if encoder_width == width:
            return encoder
    return f"an encoder of width {width}"


def make_embeds(
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    clip_output: str,
    adapter_variant: str = "",
    image_encoder: str = "",
    face_positive: torch.Tensor | None = None,
    face_negative: torch.Tensor | None = None,
) -> ImagePromptEmbeds:
    """Pair positive and negative rows; a single negative row serves every positive image (and face row)."""
    expected_rank = 3 if clip_output == PENULTIMATE else 2
    for label, tensor in (("image", positive), ("negative image", negative)):
        if tensor.dim() != expected_rank or tensor.shape[0] == 0:
            raise IPAdapterError(
                f"The {label} embedding has shape {list(tensor.shape)}; {clip_output} of one or more images is "
                f"expected ({expected_rank} dimensions). Connect a batch of at least one image."
            )
    if negative.shape[0] == 1 and positive.shape[0] > 1:
        negative = negative.expand(positive.shape[0], *negative.shape[1:])
    if face_positive is not None:
        if face_positive.shape[0] != positive.shape[0] or face_negative is None or face_negative.shape[-1] != face_positive.shape[-1]:
            raise IPAdapterError(
                f"The face embeddings ({list(face_positive.shape)}) do not pair with the CLIP rows ({list(positive.shape)}). "
                "Encode the faces again with IPAdapter Encode Face."
            )
        face_negative = face_negative.expand(face_positive.shape[0], -1) if face_negative.shape[0] == 1 else face_negative
    if negative.shape != positive.shape:
        raise IPAdapterError(
            f"The negative image batch ({negative.shape[0]} images) does not match the image batch "
            f"({positive.shape[0]} images). Give one negative image, or as many as images."
        )
    return ImagePromptEmbeds(
        positive=positive,
        negative=negative,
        clip_output=clip_output,
        adapter_variant=adapter_variant,
        image_encoder=image_encoder,
        face_positive=face_positive,
        face_negative=face_negative,
    )


def provenance(embeds: ImagePromptEmbeds) -> str:
    """' (encoded for ip-adapter_sd15 with ViT-H)' where the embeds know it, else ''."""
    parts = [f"for {embeds.adapter_variant}"] * bool(embeds.adapter_variant)
    parts += [f"with {embeds.image_encoder}"] * bool(embeds.image_encoder)
    return f" (encoded {' '.join(parts)})" if parts else ""


def check_embeds_fit(embeds: ImagePromptEmbeds, spec: EncoderReadingSpec, source: str) -> None:
    """Raise a clear error unless these embeds are what the adapter's projection reads."""
    if embeds.image_count == 0 or embeds.positive.numel() == 0:
        raise IPAdapterError("The image-prompt embeds are empty. Connect at least one reference image to Encode.")
    if not (torch.isfinite(embeds.positive).all() and torch.isfinite(embeds.negative).all()):
        raise IPAdapterError(
            "The image-prompt embeds contain NaN or infinite values. Re-encode the reference images; "
            "if that repeats, the CLIP vision model file is damaged or runs in a precision it cannot handle."
        )
    is_faceid = bool(getattr(spec, "face_embedding", ""))
    if is_faceid and (embeds.clip_output == FACE_EMBEDDING) != (spec.clip_output == FACE_EMBEDDING) or (
        is_faceid and spec.clip_output != FACE_EMBEDDING and embeds.face_positive is None
    ):
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) is an IP-Adapter FaceID file; it reads face embeddings, but these "
            f"embeds{provenance(embeds)} do not hold the ones it needs. Encode the face with IPAdapter Encode Face and "
            "this adapter connected."
        )
    if not is_faceid and (embeds.clip_output == FACE_EMBEDDING or embeds.face_positive is not None):
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) is not an IP-Adapter FaceID file, but these embeds{provenance(embeds)} are "
            "face embeddings from IPAdapter Encode Face. Encode the image with IPAdapter Encode Image, or load a FaceID file."
        )
    if embeds.clip_output != spec.clip_output:
        kind = {IMAGE_EMBEDS: "image embeds", PENULTIMATE: "penultimate hidden states", SIGLIP_POOLED: "SigLIP pooled output",
                FACE_EMBEDDING: "face embeddings"}[spec.clip_output]  # fmt: skip
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) reads the CLIP {kind}, but these embeds{provenance(embeds)} hold "
            f"{embeds.clip_output.replace('_', ' ')}. Encode the image with this adapter connected to the Encode node "
            f"and {ENCODER_FILES[spec.image_encoder]} loaded with CLIPVisionLoader."
        )
    if embeds.width != spec.embedding_dim:
        have = encoder_of_width(embeds.clip_output, embeds.width)
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) needs embeds from the {spec.image_encoder} image encoder, but these"
            f"{provenance(embeds)} come from {have}. Load {ENCODER_FILES[spec.image_encoder]} with CLIPVisionLoader and encode again."
        )
