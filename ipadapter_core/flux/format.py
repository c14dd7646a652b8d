"""The XLabs Flux IP-Adapter file (`ip_adapter.safetensors` of XLabs-AI/flux-ip-adapter and -v2), read from its
tensors: `ip_adapter_proj_model.{proj,norm}.*` and `double_blocks.{i}.processor.ip_adapter_double_stream_{k,v}_proj.*`.

The projection's Linear gives the CLIP width (768 = ViT-L/14 image embeds) and, divided by the K'/V' input width
(4096, T5's), the token count; the K'/V' rows give the transformer's hidden size (3072 for FLUX.1).
"""

import re
from dataclasses import dataclass

import torch

from ...models.flux_adapter import FluxIPAdapterModel
from ..encoders import ENCODER_IMAGE_EMBEDS_DIM, IMAGE_EMBEDS, VIT_L
from ..errors import IPAdapterError
from ..families import DitFamily
from ..formats import with_adapter_weights

FLUX = "Flux"
PROJECTION_PREFIX = "ip_adapter_proj_model."
BLOCK_KEY = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")
PROJECTION_KEYS = {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
FLUX_FILE = "ip_adapter.safetensors of XLabs-AI/flux-ip-adapter (or flux-ip-adapter-v2)"


@dataclass(frozen=True)
class FluxAdapterSpec:
    """What the pack needs to know about one XLabs Flux IP-Adapter file."""

    variant: str  # "xlabs-flux-ip-adapter"
    num_tokens: int  # image-prompt tokens per image (4 in the official files)
    embedding_dim: int  # width of the CLIP image embeds the projection reads (768)
    context_dim: int  # width of the tokens, the K'/V' input (4096)
    hidden_size: int  # K'/V' rows: the transformer's attention width (3072)
    double_blocks: int  # double blocks with K'/V' (19 for FLUX.1)
    base: str = FLUX
    projection: str = "linear"
    image_encoder: str = VIT_L
    clip_output: str = IMAGE_EMBEDS
    black_negative_image: bool = True  # diffusers' Flux pipeline encodes a black picture as the negative image
    zero_negative_embeds = False  # (not a field)
    negative_is_positive = False  # (not a field)
    adds_inside_attention = False  # (not a field) the term is added at the end of the double block

    def describe(self) -> str:
        return (
            f"{self.variant}: {self.base}, linear projection, {self.num_tokens} tokens, K'/V' in "
            f"{self.double_blocks} double blocks of width {self.hidden_size}, needs the {self.image_encoder} image "
            "encoder (image embeds)"
        )


def is_flux_adapter_file(tensors: dict) -> bool:
    """True for the XLabs layout: a projection under `ip_adapter_proj_model.` and K'/V' under `double_blocks.`."""
    keys = [key for key in tensors if isinstance(key, str)]
    return any(key.startswith(PROJECTION_PREFIX) for key in keys) and any(key.startswith("double_blocks.") for key in keys)


FLUX_FAMILY = DitFamily(
    model_kind=FLUX, adapter_name=FLUX, blocks_attribute="double_blocks",
    block_class="comfy.ldm.flux.layers.DoubleStreamBlock", blocks_name="double-stream blocks", spec_type=FluxAdapterSpec,
    wanted=f"a Flux IP-Adapter ({FLUX_FILE})", connect="a FLUX.1 model (dev or schnell)",
)  # fmt: skip


def detect_flux_spec(tensors: dict[str, torch.Tensor], name: str) -> FluxAdapterSpec:
    projection = {key[len(PROJECTION_PREFIX) :]: value for key, value in tensors.items() if key.startswith(PROJECTION_PREFIX)}
    if set(projection) != PROJECTION_KEYS:
        raise IPAdapterError(
            f"'{name}' looks like an XLabs Flux IP-Adapter but its projection has the weights {sorted(projection)}, not "
            f"{sorted(PROJECTION_KEYS)}. The file may be damaged; download ip_adapter.safetensors from XLabs-AI/flux-ip-adapter again."
        )
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, tensor in tensors.items():
        if key.startswith(PROJECTION_PREFIX):
            continue
        match = BLOCK_KEY.match(key)
        if match is None:
            raise IPAdapterError(f"'{name}' has an unexpected weight '{key}' for an XLabs Flux IP-Adapter; it may be damaged.")
        shapes.setdefault(int(match.group(1)), {})[f"{match.group(2)}.{match.group(3)}"] = tuple(tensor.shape)
    if sorted(shapes) != list(range(len(shapes))):
        raise IPAdapterError(f"'{name}' does not number its double blocks 0, 1, 2, … as the XLabs files do; it may be damaged.")
    layouts = {tuple(sorted(block.items())) for block in shapes.values()}
    if len(layouts) != 1:
        raise IPAdapterError(f"'{name}' has double blocks of different K'/V' shapes; it may be damaged.")
    block = dict(layouts.pop())
    hidden_size, context_dim = block.get("k.weight", (0, 0))
    expected = {"k.weight": (hidden_size, context_dim), "v.weight": (hidden_size, context_dim), "k.bias": (hidden_size,), "v.bias": (hidden_size,)}
    rows, embedding_dim = tuple(projection["proj.weight"].shape)
    if block != expected or rows % context_dim or tuple(projection["norm.weight"].shape) != (context_dim,):
        raise IPAdapterError(
            f"'{name}' has K'/V' weights {block} and a projection of shape {[rows, embedding_dim]} that do not fit "
            "together; it may be damaged. Download ip_adapter.safetensors from XLabs-AI/flux-ip-adapter again."
        )
    if embedding_dim != ENCODER_IMAGE_EMBEDS_DIM[VIT_L]:
        raise IPAdapterError(
            f"'{name}' reads CLIP image embeds of width {embedding_dim}; the XLabs Flux IP-Adapters read ViT-L/14's "
            f"{ENCODER_IMAGE_EMBEDS_DIM[VIT_L]}. Use an official XLabs file."
        )
    return FluxAdapterSpec(
        variant="xlabs-flux-ip-adapter",
        num_tokens=rows // context_dim,
        embedding_dim=embedding_dim,
        context_dim=context_dim,
        hidden_size=hidden_size,
        double_blocks=len(shapes),
    )


def build_flux_adapter_model(spec: FluxAdapterSpec, tensors: dict[str, torch.Tensor], name: str) -> FluxIPAdapterModel:
    """The modules on the meta device (no memory, no random init), then the file's tensors as they are."""
    with torch.device("meta"):
        model = FluxIPAdapterModel(
            embedding_dim=spec.embedding_dim,
            context_dim=spec.context_dim,
            num_tokens=spec.num_tokens,
            hidden_size=spec.hidden_size,
            double_blocks=spec.double_blocks,
        )
    fix = "The file may be damaged; download ip_adapter.safetensors from XLabs-AI/flux-ip-adapter again."
    return with_adapter_weights(model, tensors, name=name, variant=spec.variant, fix=fix)
