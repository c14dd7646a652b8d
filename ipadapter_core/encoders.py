"""The CLIP image encoders the adapters of every family read: the names of their outputs, their widths, and the
files a user loads for each; what every family's adapter spec says about the encoder it reads."""

from typing import Protocol

IMAGE_EMBEDS = "image_embeds"
PENULTIMATE = "penultimate_hidden_states"
SIGLIP_POOLED = "siglip_pooled_output"  # SigLIP's attention-pooling head on its last tokens (siglip_pooling.py)
VIT_H = "ViT-H"
VIT_BIGG = "ViT-bigG"
VIT_L = "ViT-L"
SIGLIP = "SigLIP"
INSIGHTFACE = "InsightFace"
FACE_EMBEDDING = "face_embedding"  # InsightFace's recognition embedding, 512 values (FaceID files)
# CLIP image encoders: width of image_embeds (projection) and of the hidden states.
ENCODER_IMAGE_EMBEDS_DIM = {VIT_H: 1024, VIT_BIGG: 1280, VIT_L: 768}
ENCODER_HIDDEN_DIM = {VIT_H: 1280, VIT_BIGG: 1664, VIT_L: 1024, SIGLIP: 1152}  # SigLIP: no image projection
ENCODER_FILES = {
    VIT_L: "clip_vision_l.safetensors (OpenAI CLIP ViT-L/14, openai/clip-vit-large-patch14, the encoder of XLabs' Flux IP-Adapter)",
    VIT_H: "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (the ViT-H image encoder, 'models/image_encoder' of h94/IP-Adapter)",
    VIT_BIGG: "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors (the ViT-bigG image encoder, 'sdxl_models/image_encoder' of h94/IP-Adapter)",
    INSIGHTFACE: "InsightFace's buffalo_l model pack (det_10g.onnx and w600k_r50.onnx in models/insightface/models/buffalo_l) with Load InsightFace and IPAdapter Encode Face",
    SIGLIP: "sigclip_vision_patch14_384.safetensors (google/siglip-so400m-patch14-384, the encoder of InstantX's SD3.5-Large IP-Adapter)",
}


class EncoderReadingSpec(Protocol):
    """What encoding and the embeds checks read from an adapter spec of any family (`unet/format.py` AdapterSpec,
    `flux/format.py` FluxAdapterSpec, `mmdit/format.py` SD3AdapterSpec)."""

    variant: str
    image_encoder: str  # a key of ENCODER_FILES
    clip_output: str  # IMAGE_EMBEDS | PENULTIMATE | SIGLIP_POOLED | FACE_EMBEDDING
    embedding_dim: int  # width of that output
    black_negative_image: bool  # the negative image is a black picture
    zero_negative_embeds: bool  # the negative embeds are zeros
    negative_is_positive: bool  # the negative embeds are the image's own (no unconditional image)
