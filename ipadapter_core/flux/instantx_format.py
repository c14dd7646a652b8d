"""The InstantX FLUX.1-dev IP-Adapter file (`ip-adapter.bin` of InstantX/FLUX.1-dev-IP-Adapter), read from its
tensors: `image_proj.{proj.0, proj.2, norm}.*` (an MLP projection) and `ip_adapter.{n}.to_{k,v}_ip.weight` numbered
from 0, one pair per attention block of Flux (double blocks first, then single blocks).

UNet files number their layers 1, 3, 5, … and have no `proj.2` with a separate `norm`; the XLabs Flux file keeps
other names (format.py). The projection gives SigLIP's width (1152), its inner width (2304), the token width (4096,
the LayerNorm's) and the token count (`proj.2` rows / 4096: 128); the K'/V' rows give the transformer's width (3072).
"""

import re
from dataclasses import dataclass

import torch

from ...models.instantx_flux_adapter import InstantXFluxAdapterModel
from ..encoders import ENCODER_HIDDEN_DIM, SIGLIP, SIGLIP_POOLED
from ..errors import IPAdapterError
from ..families import DitFamily
from ..formats import with_adapter_weights
from .format import FLUX

INSTANTX_FLUX_FILE = "ip-adapter.bin of InstantX/FLUX.1-dev-IP-Adapter"
PROJECTION_KEYS = {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"}
LAYER_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
HEAD_DIM = 128  # the reference's RMS norm of K' is over 128 values: FLUX.1's head width


@dataclass(frozen=True)
class InstantXFluxSpec:
    """What the pack needs to know about one InstantX FLUX.1-dev IP-Adapter file."""

    variant: str  # "instantx-flux.1-dev-ip-adapter"
    num_tokens: int  # image-prompt tokens per image (128)
    embedding_dim: int  # width of SigLIP's pooled output (1152)
    inner_dim: int  # the projection's hidden width (2304)
    context_dim: int  # token width, the K'/V' input (4096)
    hidden_size: int  # K'/V' rows: the transformer's attention width (3072)
    layers: int  # blocks with K'/V', double then single (57 for FLUX.1)
    base: str = FLUX
    projection: str = "mlp"
    image_encoder: str = SIGLIP
    clip_output: str = SIGLIP_POOLED
    black_negative_image = False  # (not a field)
    zero_negative_embeds = False  # (not a field)
    negative_is_positive = True  # (not a field) the reference runs no unconditional pass: every row gets the image
    adds_inside_attention = True  # (not a field) the term enters before the block's output projection

    def describe(self) -> str:
        return (
            f"{self.variant}: {self.base}, MLP projection, {self.num_tokens} tokens, K'/V' in {self.layers} double "
            f"and single blocks of width {self.hidden_size}, needs the {self.image_encoder} image encoder with its "
            "pooling head (pooled output)"
        )


def is_instantx_flux_file(parts: dict[str, dict[str, torch.Tensor]]) -> bool:
    """True for the InstantX layout: an MLP projection with a separate norm, K'/V' numbered from 0."""
    return set(parts["image_proj"]) == PROJECTION_KEYS and "0.to_k_ip.weight" in parts["ip_adapter"]


INSTANTX_FLUX_FAMILY = DitFamily(
    model_kind=FLUX, adapter_name="InstantX Flux", blocks_attribute="double_blocks",
    block_class="comfy.ldm.flux.layers.DoubleStreamBlock", blocks_name="double-stream blocks",
    spec_type=InstantXFluxSpec, wanted=f"a Flux IP-Adapter ({INSTANTX_FLUX_FILE})", connect="FLUX.1-dev",
)  # fmt: skip


def _damaged(name: str, what: str) -> IPAdapterError:
    return IPAdapterError(
        f"'{name}' looks like the InstantX FLUX.1-dev IP-Adapter but {what}; it may be damaged. Download "
        f"{INSTANTX_FLUX_FILE} again."
    )


def detect_instantx_flux_spec(parts: dict[str, dict[str, torch.Tensor]], name: str) -> InstantXFluxSpec:
    projection = parts["image_proj"]
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, tensor in parts["ip_adapter"].items():
        match = LAYER_KEY.match(key)
        if match is None:
            raise _damaged(name, f"it has an unexpected ip_adapter weight '{key}'")
        shapes.setdefault(int(match.group(1)), {})[match.group(2)] = tuple(tensor.shape)
    if sorted(shapes) != list(range(len(shapes))):
        raise _damaged(name, "it does not number its blocks 0, 1, 2, …")
    layouts = {tuple(sorted(block.items())) for block in shapes.values()}
    if len(layouts) != 1:
        raise _damaged(name, "its blocks have K'/V' of different shapes")
    block = dict(layouts.pop())
    inner_dim, embedding_dim = projection["proj.0.weight"].shape
    rows, proj_inner = projection["proj.2.weight"].shape
    context_dim = projection["norm.weight"].shape[0]
    hidden_size = block.get("to_k_ip", (0, 0))[0]
    expected = {"to_k_ip": (hidden_size, context_dim), "to_v_ip": (hidden_size, context_dim)}
    if block != expected or proj_inner != inner_dim or rows % context_dim or hidden_size % HEAD_DIM:
        raise _damaged(name, f"its K'/V' {block} and projection ({rows} × {proj_inner}, tokens of width {context_dim}) do not fit together")
    if embedding_dim != ENCODER_HIDDEN_DIM[SIGLIP]:
        raise IPAdapterError(
            f"'{name}' reads image features of width {embedding_dim}; the InstantX FLUX.1-dev IP-Adapter reads "
            f"SigLIP so400m's pooled output ({ENCODER_HIDDEN_DIM[SIGLIP]}). Use the official file ({INSTANTX_FLUX_FILE})."
        )
    return InstantXFluxSpec(
        variant="instantx-flux.1-dev-ip-adapter", num_tokens=rows // context_dim, embedding_dim=embedding_dim,
        inner_dim=inner_dim, context_dim=context_dim, hidden_size=hidden_size, layers=len(shapes),
    )  # fmt: skip


def build_instantx_flux_adapter_model(
    spec: InstantXFluxSpec, parts: dict[str, dict[str, torch.Tensor]], name: str
) -> InstantXFluxAdapterModel:
    """The modules on the meta device (no memory, no random init), then the file's tensors as they are."""
    with torch.device("meta"):
        model = InstantXFluxAdapterModel(
            embedding_dim=spec.embedding_dim, inner_dim=spec.inner_dim, token_dim=spec.context_dim,
            num_tokens=spec.num_tokens, hidden_size=spec.hidden_size, head_dim=HEAD_DIM, layers=spec.layers,
        )  # fmt: skip
    flat = {f"{part}.{key}": tensor for part, tensors in parts.items() for key, tensor in tensors.items()}
    return with_adapter_weights(model, flat, name=name, variant=spec.variant, fix=f"Download {INSTANTX_FLUX_FILE} again.")
