"""The InstantX SD3.5-Large IP-Adapter file (`ip-adapter.bin` of InstantX/SD3.5-Large-IP-Adapter, or the same
tensors as `.safetensors` with flat `image_proj.` / `ip_adapter.` keys), read from its tensors.

The resampler gives the SigLIP width it reads (`proj_in`: 1152), its own width (1280), depth (4), heads (`to_q`
rows / 64: 20), query count (`latents`: 64) and sinusoid width (`time_embedding.linear_1`: 320); the joint-block
weights give the transformer's attention width (`to_k_ip` rows: 2432 = 38 heads of 64), the head width
(`norm_q`: 64) and the block count (38 for SD3.5 Large).
"""

import re
from dataclasses import dataclass

import torch

from ...models.sd3_adapter import RESAMPLER_DIM_HEAD, SD3IPAdapterModel
from ..encoders import ENCODER_HIDDEN_DIM, PENULTIMATE, SIGLIP
from ..errors import IPAdapterError
from ..families import DitFamily
from ..formats import with_adapter_weights

SD3 = "SD3.5"
SD3_FILE = "ip-adapter.bin of InstantX/SD3.5-Large-IP-Adapter"
BLOCK_KEY = re.compile(r"^(\d+)\.(norm_ip\.linear\.weight|norm_ip\.linear\.bias|to_k_ip\.weight|to_v_ip\.weight|norm_q\.weight|norm_k\.weight|norm_ip_k\.weight)$")
RESAMPLER_SHAPE_KEYS = ("latents", "proj_in.weight", "proj_out.weight", "time_embedding.linear_1.weight", "layers.0.0.to_q.weight")


@dataclass(frozen=True)
class SD3AdapterSpec:
    """What the pack needs to know about one InstantX SD3.5 IP-Adapter file."""

    variant: str  # "instantx-sd3.5-large-ip-adapter"
    num_tokens: int  # resampler queries: image-prompt tokens per image (64)
    embedding_dim: int  # width of the SigLIP hidden states the resampler reads (1152)
    hidden_size: int  # token width and K'/V' rows: the transformer's attention width (2432)
    head_dim: int  # the transformer's head width (64)
    joint_blocks: int  # joint blocks with image-prompt weights (38)
    resampler_dim: int  # 1280, also the width of the timestep embedding every block's norm_ip reads
    resampler_depth: int  # 4
    resampler_heads: int  # 20
    timestep_dim: int  # width of the timestep sinusoid (320)
    base: str = SD3
    projection: str = "timestep resampler"
    image_encoder: str = SIGLIP
    clip_output: str = PENULTIMATE
    black_negative_image = False  # (not a field)
    zero_negative_embeds = True  # (not a field) diffusers' SD3 pipeline: zeros_like(image embeds) for the uncond pass
    negative_is_positive = False  # (not a field)

    def describe(self) -> str:
        return (
            f"{self.variant}: {self.base}, timestep-conditioned resampler, {self.num_tokens} tokens, image-prompt "
            f"attention in {self.joint_blocks} joint blocks of width {self.hidden_size}, needs the {self.image_encoder} "
            "image encoder (penultimate hidden states)"
        )


def is_sd3_adapter_file(parts: dict[str, dict[str, torch.Tensor]]) -> bool:
    """True for the InstantX layout: a timestep embedding in the resampler, adaptive norms in the blocks."""
    return "time_embedding.linear_1.weight" in parts["image_proj"] or any(".norm_ip." in key for key in parts["ip_adapter"])


SD3_FAMILY = DitFamily(
    model_kind="SD3", adapter_name=SD3, blocks_attribute="joint_blocks",
    block_class="comfy.ldm.modules.diffusionmodules.mmdit.JointBlock", blocks_name="MMDiT joint blocks",
    spec_type=SD3AdapterSpec, wanted=f"an SD3.5 IP-Adapter ({SD3_FILE})", connect="Stable Diffusion 3.5 Large",
)  # fmt: skip


def _damaged(name: str, what: str) -> IPAdapterError:
    return IPAdapterError(
        f"'{name}' looks like the InstantX SD3.5 IP-Adapter but {what}; it may be damaged. Download {SD3_FILE} again."
    )


def _block_shapes(ip_adapter: dict[str, torch.Tensor], name: str) -> tuple[int, dict[str, tuple[int, ...]]]:
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, tensor in ip_adapter.items():
        match = BLOCK_KEY.match(key)
        if match is None:
            raise _damaged(name, f"it has an unexpected ip_adapter weight '{key}'")
        shapes.setdefault(int(match.group(1)), {})[match.group(2)] = tuple(tensor.shape)
    if not shapes or sorted(shapes) != list(range(len(shapes))):
        raise _damaged(name, "it does not number its joint blocks 0, 1, 2, …")
    layouts = {tuple(sorted(block.items())) for block in shapes.values()}
    if len(layouts) != 1:
        raise _damaged(name, "its joint blocks have different shapes")
    return len(shapes), dict(layouts.pop())


def detect_sd3_spec(parts: dict[str, dict[str, torch.Tensor]], name: str) -> SD3AdapterSpec:
    image_proj = parts["image_proj"]
    missing = [key for key in RESAMPLER_SHAPE_KEYS if key not in image_proj]
    if missing:
        raise _damaged(name, f"its resampler lacks {missing}")
    _, num_tokens, resampler_dim = image_proj["latents"].shape
    embedding_dim = image_proj["proj_in.weight"].shape[1]
    token_dim = image_proj["proj_out.weight"].shape[0]
    timestep_dim = image_proj["time_embedding.linear_1.weight"].shape[1]
    depth = len({key.split(".")[1] for key in image_proj if key.startswith("layers.")})
    heads = image_proj["layers.0.0.to_q.weight"].shape[0] // RESAMPLER_DIM_HEAD
    joint_blocks, block = _block_shapes(parts["ip_adapter"], name)
    hidden_size = block.get("to_k_ip.weight", (0, 0))[0]
    head_dim = block.get("norm_q.weight", (0,))[0]
    expected = {
        "norm_ip.linear.weight": (2 * token_dim, resampler_dim), "norm_ip.linear.bias": (2 * token_dim,),
        "to_k_ip.weight": (hidden_size, token_dim), "to_v_ip.weight": (hidden_size, token_dim),
        "norm_q.weight": (head_dim,), "norm_k.weight": (head_dim,), "norm_ip_k.weight": (head_dim,),
    }  # fmt: skip
    if block != expected or hidden_size != token_dim or not head_dim or hidden_size % head_dim:
        raise _damaged(name, f"its joint-block weights {block} do not fit its resampler (tokens of width {token_dim})")
    if embedding_dim != ENCODER_HIDDEN_DIM[SIGLIP]:
        raise IPAdapterError(
            f"'{name}' reads image features of width {embedding_dim}; the InstantX SD3.5 IP-Adapter reads SigLIP "
            f"so400m's {ENCODER_HIDDEN_DIM[SIGLIP]}. Use the official file ({SD3_FILE})."
        )
    return SD3AdapterSpec(
        variant="instantx-sd3.5-large-ip-adapter", num_tokens=num_tokens, embedding_dim=embedding_dim,
        hidden_size=hidden_size, head_dim=head_dim, joint_blocks=joint_blocks, resampler_dim=resampler_dim,
        resampler_depth=depth, resampler_heads=heads, timestep_dim=timestep_dim,
    )  # fmt: skip


def build_sd3_adapter_model(spec: SD3AdapterSpec, parts: dict[str, dict[str, torch.Tensor]], name: str) -> SD3IPAdapterModel:
    """The modules on the meta device (no memory, no random init), then the file's tensors as they are."""
    with torch.device("meta"):
        model = SD3IPAdapterModel(
            embedding_dim=spec.embedding_dim, resampler_dim=spec.resampler_dim, resampler_depth=spec.resampler_depth,
            resampler_heads=spec.resampler_heads, num_tokens=spec.num_tokens, timestep_dim=spec.timestep_dim,
            hidden_size=spec.hidden_size, head_dim=spec.head_dim, joint_blocks=spec.joint_blocks,
        )  # fmt: skip
    flat = {f"{part}.{key}": tensor for part, tensors in parts.items() for key, tensor in tensors.items()}
    fix = f"The file may be damaged; download {SD3_FILE} again."
    return with_adapter_weights(model, flat, name=name, variant=spec.variant, fix=fix)
