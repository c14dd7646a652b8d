"""Where every model file the pack names comes from: one table for the Unified Loader's presets (presets.py) and its
missing-file messages, the example workflows (their loader nodes' `properties.models`, the note on each canvas,
workflows/README.md) and the README's model table.

Each entry names the file as ComfyUI's loaders expect it, the models sub-folder it goes in, and the public URL of
that exact file. Where the official file is published under another name (the image encoders are both
`image_encoder/model.safetensors` in h94/IP-Adapter), `url` is that file and `name` the name to save it under:
ComfyUI's front-end then offers the link for `name`, and the file must be saved (or renamed) as `name`.
"""

from dataclasses import dataclass

H94 = "https://huggingface.co/h94/IP-Adapter/resolve/main"
H94_FACEID = "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main"
OSTRIS_COMPOSITION = "https://huggingface.co/ostris/ip-composition-adapter/resolve/main"
COMPOSITION_FILES = ("ip_plus_composition_sd15.safetensors", "ip_plus_composition_sdxl.safetensors")
FACEID_FILES = (
    "ip-adapter-faceid_sd15.bin",
    "ip-adapter-faceid-plus_sd15.bin",
    "ip-adapter-faceid-plusv2_sd15.bin",
    "ip-adapter-faceid-portrait_sd15.bin",
    "ip-adapter-faceid-portrait-v11_sd15.bin",
    "ip-adapter-faceid_sdxl.bin",
    "ip-adapter-faceid-plusv2_sdxl.bin",
    "ip-adapter-faceid-portrait_sdxl.bin",
    "ip-adapter-faceid-portrait_sdxl_unnorm.bin",
)


@dataclass(frozen=True)
class ModelSource:
    folder: str  # ComfyUI models sub-folder, e.g. "ipadapter"
    name: str  # the file name the workflows and loaders use
    url: str  # download URL of that exact file
    origin: str  # Markdown: the repository or page it comes from, for people

    @property
    def renamed_from(self) -> str | None:
        """The published file name, when it differs from `name`."""
        published = self.url.rsplit("/", 1)[-1]
        return None if published == self.name else published


MODEL_SOURCES = (
    ModelSource(
        "checkpoints", "v1-5-pruned-emaonly.safetensors",
        "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
        "[stable-diffusion-v1-5/stable-diffusion-v1-5](https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5) "
        "(the mirror of runwayml/stable-diffusion-v1-5)",
    ),
    ModelSource(
        "checkpoints", "DreamShaper_8_pruned.safetensors",
        "https://huggingface.co/Lykon/DreamShaper/resolve/main/DreamShaper_8_pruned.safetensors",
        "DreamShaper 8 by Lykon, a community SD1.5 fine-tune ([Lykon/DreamShaper](https://huggingface.co/Lykon/DreamShaper)); "
        "any SD1.5 fine-tune works",
    ),
    ModelSource(
        "checkpoints", "sd_xl_base_1.0.safetensors",
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
        "[stabilityai/stable-diffusion-xl-base-1.0](https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0)",
    ),
    ModelSource(
        "clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", f"{H94}/models/image_encoder/model.safetensors",
        "[h94/IP-Adapter](https://huggingface.co/h94/IP-Adapter) `models/image_encoder/model.safetensors`",
    ),
    ModelSource(
        "clip_vision", "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", f"{H94}/sdxl_models/image_encoder/model.safetensors",
        "[h94/IP-Adapter](https://huggingface.co/h94/IP-Adapter) `sdxl_models/image_encoder/model.safetensors`",
    ),
    *(
        ModelSource("ipadapter", name, f"{H94}/models/{name}", "[h94/IP-Adapter](https://huggingface.co/h94/IP-Adapter) `models/`")
        for name in (
            "ip-adapter_sd15.safetensors",
            "ip-adapter_sd15_light.safetensors",
            "ip-adapter_sd15_light_v11.bin",
            "ip-adapter_sd15_vit-G.safetensors",
            "ip-adapter-plus_sd15.safetensors",
            "ip-adapter-plus-face_sd15.safetensors",
            "ip-adapter-full-face_sd15.safetensors",
        )
    ),
    *(
        ModelSource(
            "ipadapter", name, f"{H94}/sdxl_models/{name}", "[h94/IP-Adapter](https://huggingface.co/h94/IP-Adapter) `sdxl_models/`"
        )
        for name in (
            "ip-adapter_sdxl.safetensors",
            "ip-adapter_sdxl_vit-h.safetensors",
            "ip-adapter-plus_sdxl_vit-h.safetensors",
            "ip-adapter-plus-face_sdxl_vit-h.safetensors",
        )
    ),
    *(
        ModelSource(
            "ipadapter", name, f"{OSTRIS_COMPOSITION}/{name}",
            "[ostris/ip-composition-adapter](https://huggingface.co/ostris/ip-composition-adapter) (community: "
            "the composition of the picture, not its style or content; plus format, ViT-H)",
        )
        for name in COMPOSITION_FILES
    ),
    ModelSource(
        "clip_vision", "clip_vision_l.safetensors",
        "https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/model.safetensors",
        "[openai/clip-vit-large-patch14](https://huggingface.co/openai/clip-vit-large-patch14) (CLIP ViT-L/14; "
        "ComfyUI reads its vision half)",
    ),
    ModelSource(
        "ipadapter", "flux-ip-adapter.safetensors",
        "https://huggingface.co/XLabs-AI/flux-ip-adapter/resolve/main/ip_adapter.safetensors",
        "[XLabs-AI/flux-ip-adapter](https://huggingface.co/XLabs-AI/flux-ip-adapter) (v2: "
        "[XLabs-AI/flux-ip-adapter-v2](https://huggingface.co/XLabs-AI/flux-ip-adapter-v2))",
    ),
    ModelSource(
        "diffusion_models", "flux1-dev.safetensors",
        "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
        "[black-forest-labs/FLUX.1-dev](https://huggingface.co/black-forest-labs/FLUX.1-dev) (gated: accept its "
        "licence on the page first)",
    ),
    ModelSource(
        "vae", "ae.safetensors", "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors",
        "[black-forest-labs/FLUX.1-dev](https://huggingface.co/black-forest-labs/FLUX.1-dev)",
    ),
    *(
        ModelSource(
            "text_encoders", name, f"https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/{name}",
            "[comfyanonymous/flux_text_encoders](https://huggingface.co/comfyanonymous/flux_text_encoders)",
        )
        for name in ("t5xxl_fp16.safetensors", "clip_l.safetensors")
    ),
    ModelSource(
        "checkpoints", "sd3.5_large.safetensors",
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/resolve/main/sd3.5_large.safetensors",
        "[stabilityai/stable-diffusion-3.5-large](https://huggingface.co/stabilityai/stable-diffusion-3.5-large) "
        "(gated: accept its licence on the page first)",
    ),
    ModelSource(
        "text_encoders", "clip_g.safetensors",
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/resolve/main/text_encoders/clip_g.safetensors",
        "[stabilityai/stable-diffusion-3.5-large](https://huggingface.co/stabilityai/stable-diffusion-3.5-large) "
        "`text_encoders/`",
    ),
    ModelSource(
        "clip_vision", "sigclip_vision_patch14_384.safetensors",
        "https://huggingface.co/Comfy-Org/sigclip_vision_384/resolve/main/sigclip_vision_patch14_384.safetensors",
        "[Comfy-Org/sigclip_vision_384](https://huggingface.co/Comfy-Org/sigclip_vision_384) (SigLIP so400m-patch14-384, "
        "the vision half of google/siglip-so400m-patch14-384)",
    ),
    ModelSource(
        "ipadapter", "ip-adapter.bin",
        "https://huggingface.co/InstantX/SD3.5-Large-IP-Adapter/resolve/main/ip-adapter.bin",
        "[InstantX/SD3.5-Large-IP-Adapter](https://huggingface.co/InstantX/SD3.5-Large-IP-Adapter)",
    ),
    *(
        ModelSource("ipadapter", name, f"{H94_FACEID}/{name}", "[h94/IP-Adapter-FaceID](https://huggingface.co/h94/IP-Adapter-FaceID)")
        for name in FACEID_FILES
    ),
    ModelSource(
        "insightface", "buffalo_l.zip", "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        "InsightFace's model pack buffalo_l ([deepinsight/insightface](https://github.com/deepinsight/insightface) "
        "release v0.7): unzip it so that `models/insightface/models/buffalo_l/` holds its `.onnx` files "
        "(FaceID reads det_10g.onnx and w600k_r50.onnx)",
    ),
    ModelSource(
        "ipadapter", "flux1-dev-ip-adapter-instantx.bin",
        "https://huggingface.co/InstantX/FLUX.1-dev-IP-Adapter/resolve/main/ip-adapter.bin",
        "[InstantX/FLUX.1-dev-IP-Adapter](https://huggingface.co/InstantX/FLUX.1-dev-IP-Adapter) (published as "
        "`ip-adapter.bin`, the SD3.5 file's name: save it under this one)",
    ),
    ModelSource(
        "clip_vision", "siglip-so400m-patch14-384.safetensors",
        "https://huggingface.co/google/siglip-so400m-patch14-384/resolve/main/model.safetensors",
        "[google/siglip-so400m-patch14-384](https://huggingface.co/google/siglip-so400m-patch14-384) "
        "`model.safetensors` (vision and text; it keeps the pooling head that the InstantX Flux adapter reads)",
    ),
    ModelSource(
        "controlnet", "control_v11p_sd15_canny.pth",
        "https://huggingface.co/lllyasviel/ControlNet-v1-1/resolve/main/control_v11p_sd15_canny.pth",
        "[lllyasviel/ControlNet-v1-1](https://huggingface.co/lllyasviel/ControlNet-v1-1)",
    ),
    ModelSource(
        "controlnet", "t2iadapter_canny_sd15v2.pth",
        "https://huggingface.co/TencentARC/T2I-Adapter/resolve/main/models/t2iadapter_canny_sd15v2.pth",
        "[TencentARC/T2I-Adapter](https://huggingface.co/TencentARC/T2I-Adapter) `models/`",
    ),
)  # fmt: skip

_BY_FOLDER_AND_NAME = {(source.folder, source.name): source for source in MODEL_SOURCES}


def model_source(folder: str, name: str) -> ModelSource:
    """The entry for `name` in the models sub-folder `folder`; KeyError for a file the table does not know."""
    return _BY_FOLDER_AND_NAME[(folder, name)]
