"""The UNet (SD1.5, SDXL) IP-Adapter file: what it is, read from its tensors (and from its name only where tensors
cannot tell), and its model built from them.

FaceID files (h94/IP-Adapter-FaceID) are told by their projection: an MLP from the 512-value face embedding
(`proj.0`, `proj.2`, `norm`: 4 tokens FaceID, 16 Portrait) or that MLP with a `perceiver_resampler` (Plus). Their
`ip_adapter` part may also hold a LoRA on every attention layer (`N.to_{q,k,v,out}_lora.{down,up}.weight`), which
`split_lora` takes out. Only the name tells PlusV2 from Plus (`plusv2`) and the Portrait file trained on raw
embeddings (`unnorm`).

The tensors give the base model (cross-attention width 768 = SD1.5, 2048 = SDXL), the projection type, the token
count, and the CLIP width the projection reads (1024 = ViT-H image embeds, 1280 = ViT-bigG image embeds or ViT-H
hidden states). The name separates what has identical tensors: `light` vs standard, `plus-face` vs `plus`, and
ostris's community composition files (`ip_plus_composition_sd15` / `_sdxl`: the plus format, trained to carry the
composition of the picture) vs `plus`.
"""

import os
import re
from dataclasses import dataclass

import torch

from ...models.adapter import IPAdapterModel
from ...models.faceid_projection import FACE_EMBEDDING_DIM, FaceIDPlusProjection, FaceIDProjection
from ...models.image_projection import LinearProjection, MLPProjection, Resampler
from ..encoders import ENCODER_HIDDEN_DIM, FACE_EMBEDDING, IMAGE_EMBEDS, INSIGHTFACE, PENULTIMATE, VIT_BIGG, VIT_H
from ..errors import IPAdapterError
from ..formats import with_adapter_weights

BASE_OF_CROSS_ATTENTION_DIM = {768: "SD1.5", 2048: "SDXL"}
LAYER_COUNT_OF_BASE = {"SD1.5": 16, "SDXL": 70}
BASE_OF_LAYER_COUNT = {count: base for base, count in LAYER_COUNT_OF_BASE.items()}
RESAMPLER_DIM_HEAD = 64
RESAMPLER_FF_MULT = 4
COMPOSITION_VARIANT_OF_BASE = {"SD1.5": "ip_plus_composition_sd15", "SDXL": "ip_plus_composition_sdxl"}  # ostris's names


@dataclass(frozen=True)
class AdapterSpec:
    """Everything the rest of the pack needs to know about one adapter file."""

    variant: str  # the official file family, e.g. "ip-adapter-plus_sdxl_vit-h"
    base: str  # "SD1.5" | "SDXL"
    projection: str  # "linear" | "mlp" | "resampler" | "faceid" | "faceid_plus"
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
    face_embedding: str = ""  # FaceID files: which InsightFace embedding they read, "normed" | "raw"; "" otherwise
    shortcut: bool = False  # FaceID PlusV2: the face tokens are added back to the perceiver's output, times s
    black_negative_image = False  # (not a field) the UNet references never use a black picture as negative image
    zero_negative_embeds = False  # (not a field) their negative is encoded (or a zero image embedding, see encoding)
    negative_is_positive = False  # (not a field)

    @property
    def is_faceid(self) -> bool:
        return bool(self.face_embedding)

    @property
    def layer_count(self) -> int:
        return len(self.layer_numbers)

    def describe(self) -> str:
        if self.is_faceid:
            clip = f" and the {self.image_encoder} image encoder (penultimate hidden states)" if self.clip_output == PENULTIMATE else ""
            return (
                f"{self.variant}: {self.base}, FaceID ({self.projection}), {self.num_tokens} tokens per face, needs "
                f"InsightFace ({self.face_embedding} embedding){clip}"
            )
        return (
            f"{self.variant}: {self.base}, {self.projection} projection, {self.num_tokens} tokens, "
            f"needs the {self.image_encoder} image encoder ({self.clip_output.replace('_', ' ')})"
        )


def detect_spec(parts: dict[str, dict[str, torch.Tensor]], filename: str) -> AdapterSpec:
    """Classify the nested state dict of an official file; raise IPAdapterError if it is not one we support."""
    name = os.path.basename(filename)
    image_proj, ip_adapter = parts["image_proj"], parts["ip_adapter"]
    layer_numbers, hidden_sizes, cross_attention_dim = _read_layers(ip_adapter, name)
    base = BASE_OF_CROSS_ATTENTION_DIM.get(cross_attention_dim)
    if base is None or len(layer_numbers) != LAYER_COUNT_OF_BASE[base]:
        raise IPAdapterError(
            f"'{name}' has {len(layer_numbers)} cross-attention layers of width {cross_attention_dim}; "
            "official IP-Adapters have 16 of width 768 (SD1.5) or 70 of width 2048 (SDXL). "
            "Use an official SD1.5 or SDXL IP-Adapter file."
        )
    lowered = name.lower()
    if "perceiver_resampler.proj_in.weight" in image_proj or _is_faceid_mlp(image_proj):
        return _faceid_spec(image_proj, base, lowered, layer_numbers, hidden_sizes, cross_attention_dim, name)
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
    if "composition" in lowered:
        variant = COMPOSITION_VARIANT_OF_BASE[base]
    else:
        variant = ("ip-adapter-plus-face_" if "face" in lowered else "ip-adapter-plus_") + _suffix(base, VIT_H)
    return AdapterSpec(
        variant=variant, base=base, projection="resampler", num_tokens=num_queries,
        image_encoder=VIT_H, clip_output=PENULTIMATE, embedding_dim=embedding_dim,
        cross_attention_dim=cross_attention_dim, layer_numbers=layer_numbers, hidden_sizes=hidden_sizes,
        resampler_dim=dim, resampler_depth=depth, resampler_heads=heads,
    )  # fmt: skip


def _is_faceid_mlp(image_proj) -> bool:
    return {"proj.0.weight", "proj.2.weight", "norm.weight"} <= set(image_proj) and "proj.3.weight" not in image_proj


def _faceid_spec(image_proj, base, lowered, layer_numbers, hidden_sizes, cross_attention_dim, name):
    embedding_dim = _shape(image_proj, "proj.0.weight", name)[1]
    if embedding_dim != FACE_EMBEDDING_DIM:
        raise IPAdapterError(f"'{name}' reads face embeddings of {embedding_dim} values; InsightFace's have {FACE_EMBEDDING_DIM}.")
    num_tokens = _shape(image_proj, "proj.2.weight", name)[0] // cross_attention_dim
    suffix = "sd15" if base == "SD1.5" else "sdxl"
    common = dict(base=base, num_tokens=num_tokens, cross_attention_dim=cross_attention_dim, layer_numbers=layer_numbers, hidden_sizes=hidden_sizes)
    if "perceiver_resampler.proj_in.weight" in image_proj:
        dim, clip_width = _shape(image_proj, "perceiver_resampler.proj_in.weight", name)
        if clip_width != ENCODER_HIDDEN_DIM[VIT_H]:
            raise IPAdapterError(f"'{name}' reads CLIP hidden states of width {clip_width}; FaceID Plus files read ViT-H's 1280.")
        shortcut = "plusv2" in lowered
        return AdapterSpec(
            variant=f"ip-adapter-faceid-{'plusv2' if shortcut else 'plus'}_{suffix}", projection="faceid_plus",
            image_encoder=VIT_H, clip_output=PENULTIMATE, embedding_dim=clip_width, resampler_dim=dim,
            resampler_depth=len({key.split(".")[2] for key in image_proj if key.startswith("perceiver_resampler.layers.")}),
            resampler_heads=_shape(image_proj, "perceiver_resampler.layers.0.0.to_q.weight", name)[0] // RESAMPLER_DIM_HEAD,
            face_embedding="normed", shortcut=shortcut, **common,
        )  # fmt: skip
    portrait = num_tokens == 16
    family = "faceid-portrait" + ("-v11" if portrait and "v11" in lowered else "") if portrait else "faceid"
    unnorm = portrait and "unnorm" in lowered
    return AdapterSpec(
        variant=f"ip-adapter-{family}_{suffix}" + ("_unnorm" if unnorm else ""), projection="faceid",
        image_encoder=INSIGHTFACE, clip_output=FACE_EMBEDDING, embedding_dim=embedding_dim,
        face_embedding="raw" if unnorm else "normed", **common,
    )  # fmt: skip


def _suffix(base: str, encoder: str) -> str:
    if base == "SD1.5":
        return "sd15" if encoder == VIT_H else "sd15_vit-G"
    return "sdxl_vit-h" if encoder == VIT_H else "sdxl"


LAYER_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
LORA_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


def split_lora(parts: dict[str, dict[str, torch.Tensor]], name: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """(the parts without the FaceID LoRA, the LoRA `{"N.to_q_lora.down.weight": …}`; empty for other files)."""
    lora = {key: tensor for key, tensor in parts["ip_adapter"].items() if LORA_KEY.match(key)}
    if not lora:
        return parts, {}
    def partner(key: str) -> str:
        return key.replace(".down.", ".up.") if ".down." in key else key.replace(".up.", ".down.")

    unpaired = sorted(key for key in lora if partner(key) not in lora)
    if unpaired:
        raise IPAdapterError(
            f"'{name}': its FaceID LoRA is incomplete: {unpaired[0]} has no matching "
            f"{'up' if '.down.' in unpaired[0] else 'down'} weight. The file is damaged; download it again."
        )
    ip_adapter = {key: tensor for key, tensor in parts["ip_adapter"].items() if key not in lora}
    return {**parts, "ip_adapter": ip_adapter}, lora


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
    if spec.projection == "faceid":
        return FaceIDProjection(cross_attention_dim=spec.cross_attention_dim, num_tokens=spec.num_tokens)
    if spec.projection == "faceid_plus":
        perceiver = dict(
            dim=spec.resampler_dim, depth=spec.resampler_depth, dim_head=RESAMPLER_DIM_HEAD, heads=spec.resampler_heads,
            embedding_dim=spec.embedding_dim, output_dim=spec.cross_attention_dim, ff_mult=RESAMPLER_FF_MULT,
        )  # fmt: skip
        return FaceIDPlusProjection(
            cross_attention_dim=spec.cross_attention_dim, num_tokens=spec.num_tokens, perceiver=perceiver, shortcut=spec.shortcut
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
