"""The UNet (SD1.5, SDXL) IP-Adapter file: what it is, read from its tensors (and from its name only where tensors
cannot tell), and its model built from them.

The tensors give the base model (cross-attention width 768 = SD1.5, 2048 = SDXL), the projection type, the token
count, and the CLIP width the projection reads (1024 = ViT-H image embeds, 1280 = ViT-bigG image embeds or ViT-H
hidden states). The name separates what has identical tensors: `light` vs standard, `plus-face` vs `plus`.
"""

import os
import re
from dataclasses import dataclass

import torch

from ...models.adapter import IPAdapterModel
from ...models.image_projection import LinearProjection, MLPProjection, Resampler
from ..encoders import ENCODER_HIDDEN_DIM, IMAGE_EMBEDS, PENULTIMATE, VIT_BIGG, VIT_H
from ..errors import IPAdapterError
from ..formats import with_adapter_weights

BASE_OF_CROSS_ATTENTION_DIM = {768: "SD1.5", 2048: "SDXL"}
LAYER_COUNT_OF_BASE = {"SD1.5": 16, "SDXL": 70}
BASE_OF_LAYER_COUNT = {count: base for base, count in LAYER_COUNT_OF_BASE.items()}
RESAMPLER_DIM_HEAD = 64
RESAMPLER_FF_MULT = 4


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the rest of the pack needs to know about one adapter file."""

    variant: str  # the official file family, e.g. "ip-adapter-plus_sdxl_vit-h"
    base: str  # "SD1.5" | "SDXL"
    projection: str  # "linear" | "mlp" | "resampler"
    num_tokens: int  # image-prompt tokens per image: 4, 16 or 257
    image_encoder: str  # "ViT-H" | "ViT-bigG"
    clip_output: str  # "image_embeds" | "penultimate_hidden_states"
    embedding_dim: int  # width of the CLIP output the projection reads
    cross_attention_dim: int  # 768 | 2048
    layer_numbers: tuple[int, ...]  # the file's ip_adapter.N indices, ascending (odd)
    hidden_sizes: tuple[int, ...]  # to_k_ip rows of each layer, same order
    resampler_dim: int = 0
    resampler_depth: int = 0
    resampler_heads: int = 0
    black_negative_image = False  # (not a field) the UNet references never use a black picture as negative image
    zero_negative_embeds = False  # (not a field) their negative is encoded (or a zero image embedding, see encoding)
    negative_is_positive = False  # (not a field)

    @property
    def layer_count(self) -> int:
        return len(self.layer_numbers)

    def describe(self) -> str:
        return (
            f"{self.variant}: {self.base}, {self.projection} projection, {self.num_tokens} tokens, "
            f"needs the {self.image_encoder} image encoder ({self.clip_output.replace('_', ' ')})"
        )


def detect_spec(parts: dict[str, dict[str, torch.Tensor]], filename: str) -> AdapterSpec:
    """Classify the nested state dict of an official file; raise IPAdapterError if it is not one we support."""
    name = os.path.basename(filename)
    image_proj, ip_adapter = parts["image_proj"], parts["ip_adapter"]
    if any("lora" in key for key in ip_adapter) or "perceiver_resampler.proj_in.weight" in image_proj:
        raise IPAdapterError(
            f"'{name}' is an IP-Adapter FaceID file; FaceID needs InsightFace embeddings and is not supported by "
            "this pack yet. Use a CLIP-based adapter (ip-adapter_*, ip-adapter-plus_*, ip-adapter-full-face_*)."
        )
    layer_numbers, hidden_sizes, cross_attention_dim = _read_layers(ip_adapter, name)
    base = BASE_OF_CROSS_ATTENTION_DIM.get(cross_attention_dim)
    if base is None or len(layer_numbers) != LAYER_COUNT_OF_BASE[base]:
        raise IPAdapterError(
            f"'{name}' has {len(layer_numbers)} cross-attention layers of width {cross_attention_dim}; "
            "official IP-Adapters have 16 of width 768 (SD1.5) or 70 of width 2048 (SDXL). "
            "Use an official SD1.5 or SDXL IP-Adapter file."
        )
    lowered = name.lower()
    if "latents" in image_proj:
        return _resampler_spec(image_proj, base, lowered, layer_numbers, hidden_sizes, cross_attention_dim, name)
    if "proj.3.weight" in image_proj:
        embedding_dim = _shape(image_proj, "proj.0.weight", name)[1]
        return AdapterSpec(
            variant=f"ip-adapter-full-face_{_suffix(base, VIT_H)}",
            base=base, projection="mlp", num_tokens=257, image_encoder=VIT_H, clip_output=PENULTIMATE,
            embedding_dim=embedding_dim, cross_attention_dim=cross_attention_dim,
            layer_numbers=layer_numbers, hidden_sizes=hidden_sizes,
        )  # fmt: skip
    if "proj.weight" in image_proj and "norm.weight" in image_proj:
        rows, embedding_dim = _shape(image_proj, "proj.weight", name)
        encoder = {1024: VIT_H, 1280: VIT_BIGG}.get(embedding_dim)
        if encoder is None or rows % cross_attention_dim:
            raise IPAdapterError(f"'{name}' has an image projection of shape {[rows, embedding_dim]} that no official file has.")
        variant = "ip-adapter_" + _suffix(base, encoder)
        if base == "SD1.5" and encoder == VIT_H and "light" in lowered:
            variant = "ip-adapter_sd15_light_v11" if "v11" in lowered else "ip-adapter_sd15_light"
        return AdapterSpec(
            variant=variant, base=base, projection="linear", num_tokens=rows // cross_attention_dim,
            image_encoder=encoder, clip_output=IMAGE_EMBEDS, embedding_dim=embedding_dim,
            cross_attention_dim=cross_attention_dim, layer_numbers=layer_numbers, hidden_sizes=hidden_sizes,
        )  # fmt: skip
    raise IPAdapterError(
        f"'{name}' has an image projection this pack does not know (keys: {', '.join(sorted(image_proj)[:4])}…). "
        "Use an official IP-Adapter file."
    )


def _resampler_spec(image_proj, base, lowered, layer_numbers, hidden_sizes, cross_attention_dim, name):
    _, num_queries, dim = _shape(image_proj, "latents", name)
    embedding_dim = _shape(image_proj, "proj_in.weight", name)[1]
    depth = len({key.split(".")[1] for key in image_proj if key.startswith("layers.")})
    heads = _shape(image_proj, "layers.0.0.to_q.weight", name)[0] // RESAMPLER_DIM_HEAD
    if embedding_dim != ENCODER_HIDDEN_DIM[VIT_H]:
        raise IPAdapterError(f"'{name}' reads CLIP hidden states of width {embedding_dim}; official plus files read ViT-H's 1280.")
    family = "ip-adapter-plus-face" if "face" in lowered else "ip-adapter-plus"
    return AdapterSpec(
        variant=f"{family}_{_suffix(base, VIT_H)}", base=base, projection="resampler", num_tokens=num_queries,
        image_encoder=VIT_H, clip_output=PENULTIMATE, embedding_dim=embedding_dim,
        cross_attention_dim=cross_attention_dim, layer_numbers=layer_numbers, hidden_sizes=hidden_sizes,
        resampler_dim=dim, resampler_depth=depth, resampler_heads=heads,
    )  # fmt: skip


def _suffix(base: str, encoder: str) -> str:
    if base == "SD1.5":
        return "sd15" if encoder == VIT_H else "sd15_vit-G"
    return "sdxl_vit-h" if encoder == VIT_H else "sdxl"


LAYER_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


def _read_layers(ip_adapter: dict[str, torch.Tensor], name: str):
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, tensor in ip_adapter.items():
        match = LAYER_KEY.match(key)
        if match is None:
            raise IPAdapterError(f"'{name}' has an unexpected ip_adapter weight '{key}'. Use an official IP-Adapter file.")
        shapes.setdefault(int(match.group(1)), {})[match.group(2)] = tuple(tensor.shape)
    numbers = tuple(sorted(shapes))
    if not numbers or numbers != tuple(range(1, 2 * len(numbers), 2)):
        raise IPAdapterError(f"'{name}' does not number its layers 1, 3, 5, … as official files do; it may be damaged.")
    hidden_sizes, widths = [], set()
    for number in numbers:
        pair = shapes[number]
        if set(pair) != {"k", "v"} or pair["k"] != pair["v"] or len(pair["k"]) != 2:
            raise IPAdapterError(f"'{name}' layer {number} does not have matching to_k_ip/to_v_ip weights; it may be damaged.")
        hidden_sizes.append(pair["k"][0])
        widths.add(pair["k"][1])
    if len(widths) != 1:
        raise IPAdapterError(f"'{name}' mixes cross-attention widths {sorted(widths)}; it may be damaged.")
    return numbers, tuple(hidden_sizes), widths.pop()


def _shape(state: dict[str, torch.Tensor], key: str, name: str) -> tuple[int, ...]:
    if key not in state:
        raise IPAdapterError(f"'{name}' lacks the weight image_proj.{key}; the file is incomplete. Download it again.")
    return tuple(state[key].shape)


def build_adapter_model(spec: AdapterSpec, parts: dict[str, dict[str, torch.Tensor]], name: str) -> IPAdapterModel:
    """Build the modules on the meta device (no memory, no random init), then take the file's tensors as they are."""
    with torch.device("meta"):
        model = IPAdapterModel(
            image_proj=_image_projection(spec),
            cross_attention_dim=spec.cross_attention_dim,
            hidden_sizes=dict(zip(spec.layer_numbers, spec.hidden_sizes)),
        )
    flat = {f"{part}.{key}": tensor for part, tensors in parts.items() for key, tensor in tensors.items()}
    fix = "The file may be damaged or an unofficial variant; download the official file again."
    return with_adapter_weights(model, flat, name=name, variant=spec.variant, fix=fix)


def _image_projection(spec: AdapterSpec) -> torch.nn.Module:
    if spec.projection == "linear":
        return LinearProjection(
            embedding_dim=spec.embedding_dim, cross_attention_dim=spec.cross_attention_dim, num_tokens=spec.num_tokens
        )
    if spec.projection == "mlp":
        return MLPProjection(embedding_dim=spec.embedding_dim, cross_attention_dim=spec.cross_attention_dim)
    return Resampler(
        dim=spec.resampler_dim,
        depth=spec.resampler_depth,
        dim_head=RESAMPLER_DIM_HEAD,
        heads=spec.resampler_heads,
        num_queries=spec.num_tokens,
        embedding_dim=spec.embedding_dim,
        output_dim=spec.cross_attention_dim,
        ff_mult=RESAMPLER_FF_MULT,
    )
