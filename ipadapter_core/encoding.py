"""Encoding reference images with a ComfyUI CLIP vision model into the embeds an adapter reads.

The CLIP vision object is ComfyUI's `comfy.clip_vision.ClipVisionModel`; it is only called here (its own
preprocessing: resize the short side to the encoder's size, centre crop, normalise), never imported.

Two ways to make a picture that is not square fit the encoder's square input (`crop`):
- `center`: ComfyUI's preprocessing as it is, which is the reference's (CLIPImageProcessor: short side resized,
  centre crop): the edges of the long side are cut off.
- `pad`: the whole picture, centred on a square of the encoder's mean colour (`clip_vision.image_mean`, the
  normalisation mean: (0.481, 0.458, 0.408) for CLIP), then the same preprocessing. That colour normalises to
  zero (to within ComfyUI's rounding to 8 bits), the pixel value the reference itself uses for "no image" (its unconditional input for plus adapters), so the
  padding adds as little as a colour can; black or white bars would read as part of the picture.

The enhancer (`enhance_tiles` > 1, enhancer.py) also reads each picture in tiles: with `center` the picture as it is
is cut (each tile then centre-cropped, the port's way), with `pad` the padded square. The negative image is read
whole, as in the port. `weight` scales the positive embeds after that; the negative keeps its size.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .embeds import ImagePromptEmbeds, encoder_of_width, make_embeds
from .encoders import ENCODER_FILES, FACE_EMBEDDING, IMAGE_EMBEDS, PENULTIMATE, SIGLIP, SIGLIP_POOLED, EncoderReadingSpec
from .enhancer import check_enhancer_fits, merge_tiles, mix_with_whole, split_into_tiles
from .errors import IPAdapterError
from .face_analysis import CLIP_CROP_SIZE, FACE_IMAGE_SIZE, FaceAnalyser, aligned_faces, find_faces
from .siglip_pooling import LOADER_NAME, SIGLIP_WITH_HEAD_FILE, pooled_output

ENCODE_BATCH_SIZE = 16
CROP_MODES = ("center", "pad")


def encoder_widths(clip_vision) -> tuple[int, int] | None:
    """(image_embeds width, hidden-state width) of a CLIP vision model, read from its projection weight; None for
    an encoder without an image projection (SigLIP, DINO)."""
    projection = getattr(clip_vision.model, "visual_projection", None)
    weight = getattr(projection, "weight", None)
    if weight is None:
        return None
    projection_dim, hidden_dim = weight.shape
    return projection_dim, hidden_dim


def hidden_width(clip_vision) -> int | None:
    """The hidden-state width of a ComfyUI vision model (its patch embedding's output channels), None if unknown."""
    vision = getattr(clip_vision.model, "vision_model", None)
    weight = getattr(getattr(getattr(vision, "embeddings", None), "patch_embedding", None), "weight", None)
    return None if weight is None else weight.shape[0]


def check_siglip_fits(clip_vision, spec, source: str) -> None:
    """SigLIP so400m: no CLIP image projection, hidden states of width 1152."""
    widths = encoder_widths(clip_vision)
    width = hidden_width(clip_vision)
    if widths is not None or width != spec.embedding_dim:
        have = f"CLIP {encoder_of_width(IMAGE_EMBEDS, widths[0])}" if widths is not None else f"an encoder of width {width}"
        load = (
            f"Load {SIGLIP_WITH_HEAD_FILE} with {LOADER_NAME}" if spec.clip_output == SIGLIP_POOLED
            else f"Load {ENCODER_FILES[SIGLIP]} with CLIPVisionLoader"
        )  # fmt: skip
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) needs the {SIGLIP} so400m image encoder (hidden states of width "
            f"{spec.embedding_dim}), but the connected vision model is {have}. {load}."
        )


def check_encoder_fits(clip_vision, spec: EncoderReadingSpec, source: str) -> None:
    if spec.image_encoder == SIGLIP:
        return check_siglip_fits(clip_vision, spec, source)
    widths = encoder_widths(clip_vision)
    if widths is None:
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) needs the {spec.image_encoder} CLIP image encoder, but the connected vision "
            f"model has no CLIP image projection. Load {ENCODER_FILES[spec.image_encoder]} with CLIPVisionLoader."
        )
    projection_dim, hidden_dim = widths
    width = projection_dim if spec.clip_output == IMAGE_EMBEDS else hidden_dim
    if width != spec.embedding_dim:
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) needs the {spec.image_encoder} image encoder, but the connected CLIP vision "
            f"model is {encoder_of_width(spec.clip_output, width)}. Load {ENCODER_FILES[spec.image_encoder]} "
            "with CLIPVisionLoader."
        )


def pad_to_square(images: torch.Tensor, *, fill: Sequence[float]) -> torch.Tensor:
    """`[B, H, W, C]` -> `[B, S, S, C]` with S = max(H, W): the pictures centred (an odd remainder goes to the bottom
    and right), the rest `fill` (one value per channel)."""
    batch, height, width, channels = images.shape
    if height == width:
        return images
    size = max(height, width)
    colour = torch.tensor(fill, dtype=images.dtype, device=images.device)  # [C]
    square = colour.expand(batch, size, size, channels).clone()  # [B, S, S, C]
    top, left = (size - height) // 2, (size - width) // 2
    square[:, top : top + height, left : left + width, :] = images
    return square


def encode_images(
    clip_vision,
    images: torch.Tensor,
    *,
    clip_output: str,
    crop: str = "center",
    after_batch: Callable[[int], None] = lambda count: None,
    batch_size: int = ENCODE_BATCH_SIZE,
) -> torch.Tensor:
    """CLIP output of an IMAGE batch `[B, H, W, C]`, encoded `batch_size` images at a time -> `[B, E]` or `[B, S, E]`;
    `crop` is one of CROP_MODES (see the module docstring); `after_batch(count)` is called after each batch
    (progress, interrupts)."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise IPAdapterError(f"Expected an IMAGE batch [B, H, W, C] with at least one image, got shape {list(images.shape)}.")
    if crop not in CROP_MODES:
        raise IPAdapterError(f"Unknown crop '{crop}'; use one of {', '.join(CROP_MODES)}.")
    encoded = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size, :, :, :3]  # [b, H, W, 3]: an alpha channel is dropped
        if crop == "pad":
            chunk = pad_to_square(chunk, fill=clip_vision.image_mean)  # [b, S, S, 3]
        encoded.append(clip_vision_output(clip_vision, chunk, clip_output=clip_output))
        after_batch(chunk.shape[0])
    return torch.cat(encoded)


def encode_enhanced(
    clip_vision,
    images: torch.Tensor,
    *,
    clip_output: str,
    crop: str,
    tiles: int,
    ratio: float,
    after_batch: Callable[[int], None],
) -> torch.Tensor:
    """encode_images' output mixed with the pictures' tiles' merged reading (enhancer.py); tiles = 1: encode_images'
    output as it is. `[B, H, W, C]` -> `[B, …]`, or `[2, …]` for one picture."""
    whole = encode_images(clip_vision, images, clip_output=clip_output, crop=crop, after_batch=after_batch)
    if tiles == 1:
        return whole
    pictures = images[:, :, :, :3]  # [B, H, W, 3]
    if crop == "pad":
        pictures = pad_to_square(pictures, fill=clip_vision.image_mean)  # [B, S, S, 3]
    tile_pictures = split_into_tiles(pictures, tiles=tiles)  # [B·tiles², h, w, 3]
    tile_outputs = encode_images(clip_vision, tile_pictures, clip_output=clip_output, after_batch=after_batch)
    merged = merge_tiles(tile_outputs, tiles=tiles, clip_output=clip_output)  # [B, …]
    return mix_with_whole(whole, merged, ratio=ratio)


def clip_vision_output(clip_vision, pictures: torch.Tensor, *, clip_output: str) -> torch.Tensor:
    """ComfyUI's encoding of `[b, H, W, 3]` pictures: its centre-cropped `clip_output`, or for SIGLIP_POOLED the
    pooling head on the tokens of the whole picture resized to the encoder's square (the reference's way)."""
    if clip_output == SIGLIP_POOLED:
        return pooled_output(clip_vision, clip_vision.encode_image(pictures, crop=False)["image_embeds"])  # [b, W]
    return clip_vision.encode_image(pictures, crop=True)[clip_output]


def unconditional_output(clip_vision, positive: torch.Tensor, *, clip_output: str) -> torch.Tensor:
    """The reference's negative: a zero embedding (base adapters), or the encoder's penultimate hidden states of an
    all-zero *normalised* pixel tensor (plus / full-face adapters): the mean-colour image, not a black one."""
    if clip_output == IMAGE_EMBEDS:
        return torch.zeros_like(positive[:1])
    import comfy.model_management

    comfy.model_management.load_model_gpu(clip_vision.patcher)
    size = clip_vision.image_size
    pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)  # [1, 3, S, S], already normalised
    hidden = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[1]  # [1, T, E]
    return hidden.to(device=positive.device, dtype=positive.dtype)


def encode_image_prompt(
    clip_vision,
    spec: EncoderReadingSpec,
    source: str,
    images,
    negative_images,
    *,
    crop: str = "center",
    weight: float = 1.0,
    enhance_tiles: int = 1,
    enhance_ratio: float = 1.0,
    after_batch,
) -> ImagePromptEmbeds:
    """The image prompt of `images` for an adapter: `weight` times their (enhanced, see encode_enhanced) encoding, and
    the negative: `negative_images` encoded whole, else the adapter's own unconditional embedding."""
    if getattr(spec, "face_embedding", ""):
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) is an IP-Adapter FaceID file: it reads InsightFace face embeddings, not CLIP "
            "image embeds. Use IPAdapter Encode Face (with Load InsightFace) instead of IPAdapter Encode Image."
        )
    check_encoder_fits(clip_vision, spec, source)
    check_enhancer_fits(spec, source, tiles=enhance_tiles, ratio=enhance_ratio)
    if negative_images is None and spec.black_negative_image:
        size = clip_vision.image_size
        negative_images = torch.zeros(1, size, size, 3)  # [1, S, S, 3]: a black picture, the reference's negative
    reading = dict(clip_output=spec.clip_output, crop=crop, after_batch=after_batch)
    encoded = encode_enhanced(clip_vision, images, tiles=enhance_tiles, ratio=enhance_ratio, **reading)
    positive = encoded * weight
    if negative_images is None and spec.negative_is_positive:
        negative = positive  # no unconditional image: every batch row reads the (weighted) image prompt
    elif negative_images is None and spec.zero_negative_embeds:
        negative = torch.zeros_like(positive[:1])  # the reference's negative: zero hidden states, not an encoded picture
    elif negative_images is None:
        negative = unconditional_output(clip_vision, positive, clip_output=spec.clip_output)
    else:
        negative = encode_images(clip_vision, negative_images, **reading)
    return make_embeds(
        positive, negative, clip_output=spec.clip_output, adapter_variant=spec.variant, image_encoder=spec.image_encoder
    )


def encode_faces(
    analyser: FaceAnalyser, spec, source: str, images: torch.Tensor, clip_vision=None, *, skip_missing: bool, after_image
) -> tuple[ImagePromptEmbeds, torch.Tensor]:
    """The FaceID embeds of the first face of each picture: the face embeddings (negative: zeros) and, for FaceID
    Plus, CLIP's penultimate hidden states of each aligned 224×224 face crop (negative: the encoder's output on zero
    pixel values). Several faces are one image prompt, their tokens side by side (Portrait: n×16 tokens).
    Also the aligned crops of those faces at the port's face_image size for the adapter's base model
    `[N, S, S, 3]` RGB in 0..1, for another adapter (a plus-face one) to read."""
    if not getattr(spec, "face_embedding", ""):
        raise IPAdapterError(
            f"'{source}' ({spec.variant}) is not an IP-Adapter FaceID file. Load an ip-adapter-faceid* file for IPAdapter "
            "Encode Face, or encode this adapter's pictures with IPAdapter Encode Image."
        )
    if images.dim() != 4 or images.shape[0] == 0:
        raise IPAdapterError(f"Expected an IMAGE batch [B, H, W, C] with at least one image, got shape {list(images.shape)}.")
    plus = spec.clip_output == PENULTIMATE
    if plus:
        if clip_vision is None:
            raise IPAdapterError(
                f"'{source}' ({spec.variant}) also reads the face crop with CLIP: connect the {spec.image_encoder} image "
                f"encoder ({ENCODER_FILES[spec.image_encoder]}, with CLIPVisionLoader) to clip_vision."
            )
        check_encoder_fits(clip_vision, spec, source)
    faces = find_faces(analyser, images, raw_embedding=spec.face_embedding == "raw", skip_missing=skip_missing, after_image=after_image)
    face_images = aligned_faces(images, faces, size=FACE_IMAGE_SIZE[spec.base])  # [N, S, S, 3] RGB
    embeddings = torch.from_numpy(np.stack([face.embedding for face in faces]))  # [N, 512]
    zeros = torch.zeros_like(embeddings[:1])  # [1, 512], the reference's negative
    common = dict(adapter_variant=spec.variant, image_encoder=f"InsightFace {analyser.name}")
    if not plus:
        return make_embeds(embeddings, zeros, clip_output=FACE_EMBEDDING, **common), face_images
    crops = face_images if face_images.shape[1] == CLIP_CROP_SIZE else aligned_faces(images, faces, size=CLIP_CROP_SIZE)  # [N, 224, 224, 3]
    hidden = encode_images(clip_vision, crops, clip_output=PENULTIMATE)  # [N, 257, 1280]
    negative = unconditional_output(clip_vision, hidden, clip_output=PENULTIMATE)  # [1, 257, 1280]
    common["image_encoder"] += f" + {spec.image_encoder}"
    return make_embeds(hidden, negative, clip_output=PENULTIMATE, face_positive=embeddings, face_negative=zeros, **common), face_images
