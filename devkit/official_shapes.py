"""Random-valued stand-ins for the official IP-Adapter files: real key names, real shapes, fp16.

Each `OfficialVariant` is one official file family of h94/IP-Adapter with what detection must report for it. The
shapes come from the real layer widths (`SD15_HIDDEN_SIZES` / `SDXL_HIDDEN_SIZES`) and the projection sizes of the
reference (research note reference-formats.md §2.3); `IMAGE_PROJ_SHAPES` and `PARAMETER_COUNT` restate that table
so a test can check the generated files against it. The SD1.5 files (44-98 MB) take about a second each; the SDXL
ones (700-850 MB) take several seconds and belong in tests marked `slow`. The DiT adapters (XLabs Flux, InstantX
SD3.5 Large) are at the end: shapes from the pack's own modules built full-size on the meta device.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_models import SD15_HIDDEN_SIZES, SD15_TEXT_WIDTH, SDXL_HIDDEN_SIZES, SDXL_TEXT_WIDTH, adapter_state_dict, random_parameter

VIT_H, VIT_BIGG = "ViT-H", "ViT-bigG"
IMAGE_EMBEDS, PENULTIMATE = "image_embeds", "penultimate_hidden_states"
CONTAINERS = ("safetensors", "bin")


@dataclass(frozen=True)
class OfficialVariant:
    name: str  # the official file name without extension, e.g. "ip-adapter-plus_sd15"
    base: str  # "SD1.5" | "SDXL"
    projection: str  # "linear" | "mlp" | "resampler"
    num_tokens: int
    image_encoder: str  # VIT_H | VIT_BIGG
    clip_output: str  # IMAGE_EMBEDS | PENULTIMATE
    embedding_dim: int  # width of the CLIP output the projection reads
    seed: int

    @property
    def text_width(self) -> int:
        return SD15_TEXT_WIDTH if self.base == "SD1.5" else SDXL_TEXT_WIDTH

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return SD15_HIDDEN_SIZES if self.base == "SD1.5" else SDXL_HIDDEN_SIZES

    @property
    def layer_count(self) -> int:
        return len(self.hidden_sizes)

    @property
    def resampler_dim(self) -> int:
        if self.projection != "resampler":
            return 0
        return 768 if self.base == "SD1.5" else 1280  # the SDXL plus Resampler works at 1280, not 2048

    def expected_spec(self) -> dict:
        """`dataclasses.asdict` of the AdapterSpec that detection must return for this file."""
        dim = self.resampler_dim
        return dict(
            variant=self.name, base=self.base, projection=self.projection, num_tokens=self.num_tokens,
            image_encoder=self.image_encoder, clip_output=self.clip_output, embedding_dim=self.embedding_dim,
            cross_attention_dim=self.text_width, layer_numbers=tuple(range(1, 2 * self.layer_count, 2)),
            hidden_sizes=self.hidden_sizes, resampler_dim=dim, resampler_depth=4 if dim else 0,
            resampler_heads=dim // 64, face_embedding="", shortcut=False,
        )  # fmt: skip


def _variant(name, base, projection, tokens, encoder, output, width, seed):
    return OfficialVariant(name, base, projection, tokens, encoder, output, width, seed)


VARIANTS = {
    variant.name: variant
    for variant in (
        _variant("ip-adapter_sd15", "SD1.5", "linear", 4, VIT_H, IMAGE_EMBEDS, 1024, seed=11),
        _variant("ip-adapter_sd15_light", "SD1.5", "linear", 4, VIT_H, IMAGE_EMBEDS, 1024, seed=12),
        _variant("ip-adapter_sd15_light_v11", "SD1.5", "linear", 4, VIT_H, IMAGE_EMBEDS, 1024, seed=13),
        _variant("ip-adapter_sd15_vit-G", "SD1.5", "linear", 4, VIT_BIGG, IMAGE_EMBEDS, 1280, seed=14),
        _variant("ip-adapter-plus_sd15", "SD1.5", "resampler", 16, VIT_H, PENULTIMATE, 1280, seed=15),
        _variant("ip-adapter-plus-face_sd15", "SD1.5", "resampler", 16, VIT_H, PENULTIMATE, 1280, seed=16),
        _variant("ip-adapter-full-face_sd15", "SD1.5", "mlp", 257, VIT_H, PENULTIMATE, 1280, seed=17),
        _variant("ip-adapter_sdxl", "SDXL", "linear", 4, VIT_BIGG, IMAGE_EMBEDS, 1280, seed=21),
        _variant("ip-adapter_sdxl_vit-h", "SDXL", "linear", 4, VIT_H, IMAGE_EMBEDS, 1024, seed=22),
        _variant("ip-adapter-plus_sdxl_vit-h", "SDXL", "resampler", 16, VIT_H, PENULTIMATE, 1280, seed=23),
        _variant("ip-adapter-plus-face_sdxl_vit-h", "SDXL", "resampler", 16, VIT_H, PENULTIMATE, 1280, seed=24),
    )
}
SD15_VARIANTS = tuple(name for name, variant in VARIANTS.items() if variant.base == "SD1.5")
SDXL_VARIANTS = tuple(name for name, variant in VARIANTS.items() if variant.base == "SDXL")

# reference-formats.md §2.3, restated: shapes of characteristic image_proj tensors, and total parameter counts.
_RESAMPLER_SD15 = {
    "latents": (1, 16, 768), "proj_in.weight": (768, 1280), "proj_in.bias": (768,),
    "layers.3.0.norm1.weight": (768,), "layers.0.0.to_q.weight": (768, 768), "layers.0.0.to_kv.weight": (1536, 768),
    "layers.0.0.to_out.weight": (768, 768), "layers.2.1.0.bias": (768,), "layers.0.1.1.weight": (3072, 768),
    "layers.0.1.3.weight": (768, 3072), "proj_out.weight": (768, 768), "proj_out.bias": (768,), "norm_out.weight": (768,),
}  # fmt: skip
_RESAMPLER_SDXL = {
    "latents": (1, 16, 1280), "proj_in.weight": (1280, 1280), "layers.0.0.to_q.weight": (1280, 1280),
    "layers.0.0.to_kv.weight": (2560, 1280), "layers.0.0.to_out.weight": (1280, 1280),
    "layers.3.1.1.weight": (5120, 1280), "layers.3.1.3.weight": (1280, 5120), "proj_out.weight": (2048, 1280),
    "norm_out.bias": (2048,),
}  # fmt: skip
_FULL_FACE_SD15 = {
    "proj.0.weight": (1280, 1280), "proj.0.bias": (1280,), "proj.2.weight": (768, 1280), "proj.2.bias": (768,),
    "proj.3.weight": (768,), "proj.3.bias": (768,),
}  # fmt: skip


def _linear(rows, width, norm):
    return {"proj.weight": (rows, width), "proj.bias": (rows,), "norm.weight": (norm,), "norm.bias": (norm,)}


IMAGE_PROJ_SHAPES = {
    "ip-adapter_sd15": _linear(3072, 1024, 768),
    "ip-adapter_sd15_light": _linear(3072, 1024, 768),
    "ip-adapter_sd15_light_v11": _linear(3072, 1024, 768),
    "ip-adapter_sd15_vit-G": _linear(3072, 1280, 768),
    "ip-adapter-plus_sd15": _RESAMPLER_SD15,
    "ip-adapter-plus-face_sd15": _RESAMPLER_SD15,
    "ip-adapter-full-face_sd15": _FULL_FACE_SD15,
    "ip-adapter_sdxl": _linear(8192, 1280, 2048),
    "ip-adapter_sdxl_vit-h": _linear(8192, 1024, 2048),
    "ip-adapter-plus_sdxl_vit-h": _RESAMPLER_SDXL,
    "ip-adapter-plus-face_sdxl_vit-h": _RESAMPLER_SDXL,
}
PARAMETER_COUNT = {
    "ip-adapter_sd15": 22_319_616,
    "ip-adapter_sd15_light": 22_319_616,
    "ip-adapter_sd15_light_v11": 22_319_616,
    "ip-adapter_sd15_vit-G": 23_106_048,
    "ip-adapter-plus_sd15": 49_087_488,
    "ip-adapter-plus-face_sd15": 49_087_488,
    "ip-adapter-full-face_sd15": 21_794_304,
    "ip-adapter_sdxl": 351_285_248,
    "ip-adapter_sdxl_vit-h": 349_188_096,
    "ip-adapter-plus_sdxl_vit-h": 423_748_864,
    "ip-adapter-plus-face_sdxl_vit-h": 423_748_864,
}


_DEFAULT_INIT_FUNCTIONS = ("kaiming_uniform_", "uniform_", "normal_", "ones_", "zeros_")  # Linear and LayerNorm resets


@contextlib.contextmanager
def _default_initialisation_skipped():
    """`adapter_state_dict` overwrites every parameter with its own seeded values, so the modules' default (random)
    initialisation is wasted work: about half the time of an SDXL-size file. Skip it while building."""
    saved = {name: getattr(torch.nn.init, name) for name in _DEFAULT_INIT_FUNCTIONS}
    for name in _DEFAULT_INIT_FUNCTIONS:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def official_state_dict(variant: OfficialVariant) -> dict[str, torch.Tensor]:
    """Flat official-format tensors (`image_proj.*`, `ip_adapter.N.to_{k,v}_ip.weight`), random values, fp16."""
    with _default_initialisation_skipped():
        return adapter_state_dict(
            variant.projection,
            hidden_sizes=variant.hidden_sizes,
            text_width=variant.text_width,
            seed=variant.seed,
            embedding_dim=variant.embedding_dim,
            dtype=torch.float16,
        )


def write_state_dict(flat: dict[str, torch.Tensor], path: Path) -> Path:
    """Write as the official files are written: `.safetensors` flat, `.bin` the nested dict through torch.save."""
    path = Path(path)
    if path.suffix == ".safetensors":
        save_file(flat, str(path))
    elif path.suffix == ".bin":
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            part, _, rest = key.partition(".")
            parts.setdefault(part, {})[rest] = value
        torch.save(parts, str(path))
    else:
        raise ValueError(f"unknown container {path.suffix}")
    return path


def write_official_file(
    variant: OfficialVariant | str,
    directory: Path,
    container: str = "safetensors",
    *,
    flat: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `<directory>/<official name>.<container>`; pass `flat` to reuse tensors already generated."""
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {CONTAINERS}")
    tensors = official_state_dict(variant) if flat is None else flat
    return write_state_dict(tensors, Path(directory) / f"{variant.name}.{container}")


def with_training_prefixes(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under the training checkpoint's names: `image_proj_model.*` and `adapter_modules.*`."""
    renamed = {"image_proj": "image_proj_model", "ip_adapter": "adapter_modules"}
    return {renamed[key.partition(".")[0]] + "." + key.partition(".")[2]: value for key, value in flat.items()}



# --- DiT adapters: XLabs Flux (ip_adapter.safetensors) and InstantX SD3.5 Large (ip-adapter.bin) -------------------
# The real models' widths: FLUX.1 has 19 double blocks of width 3072, T5 width 4096, CLIP ViT-L image embeds 768,
# 4 tokens; SD3.5 Large has 38 joint blocks of 38 heads of 64 (2432); the InstantX resampler reads SigLIP so400m's
# 1152-wide hidden states at width 1280, depth 4, 20 heads, 64 queries, with a 320-wide timestep sinusoid.
XLABS_FLUX_SHAPE = dict(embedding_dim=768, context_dim=4096, num_tokens=4, hidden_size=3072, double_blocks=19)
INSTANTX_SD35_LARGE_SHAPE = dict(
    embedding_dim=1152, resampler_dim=1280, resampler_depth=4, resampler_heads=20, num_tokens=64, timestep_dim=320,
    hidden_size=2432, head_dim=64, joint_blocks=38,
)  # fmt: skip


# InstantX/FLUX.1-dev-IP-Adapter's ip-adapter.bin: SigLIP so400m's pooled 1152 -> 2304 -> 128 tokens of 4096, K'/V'
# of width 3072 for FLUX.1's 19 double and 38 single blocks (about 2.6 B parameters, 5.3 GB in fp16).
INSTANTX_FLUX_SHAPE = dict(embedding_dim=1152, inner_dim=2304, token_dim=4096, num_tokens=128, hidden_size=3072, head_dim=128,
                           layers=57)  # fmt: skip


def instantx_flux_meta_model() -> torch.nn.Module:
    """The full-size InstantX FLUX.1-dev adapter on the meta device: its shapes, no memory."""
    from decoupled_ipadapter.models.instantx_flux_adapter import InstantXFluxAdapterModel

    with torch.device("meta"):
        return InstantXFluxAdapterModel(**INSTANTX_FLUX_SHAPE)


def instantx_flux_official_state_dict(*, seed: int = 33) -> dict[str, torch.Tensor]:
    """InstantX/FLUX.1-dev-IP-Adapter's ip-adapter.bin, flattened: official keys and shapes, random fp16 (about
    5.3 GB; `write_state_dict(..., path.bin)` nests it as the official file)."""
    return _random_fp16_state_dict(instantx_flux_meta_model(), seed=seed)


def _random_fp16_state_dict(meta_module: torch.nn.Module, *, seed: int) -> dict[str, torch.Tensor]:
    """Random fp16 tensors under a module's own key names and shapes (the module is built on the meta device, so
    nothing is allocated twice); one tensor at a time is drawn in fp32."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: random_parameter(key, tensor.shape, generator=generator).to(torch.float16)
        for key, tensor in meta_module.state_dict().items()
    }


def xlabs_flux_official_state_dict(*, seed: int = 31) -> dict[str, torch.Tensor]:
    """XLabs-AI/flux-ip-adapter's ip_adapter.safetensors: official keys and shapes, random fp16 (about 980 MB)."""
    from decoupled_ipadapter.models.flux_adapter import FluxIPAdapterModel

    with torch.device("meta"):
        model = FluxIPAdapterModel(**XLABS_FLUX_SHAPE)
    return _random_fp16_state_dict(model, seed=seed)


def instantx_sd35_official_state_dict(*, seed: int = 32) -> dict[str, torch.Tensor]:
    """InstantX/SD3.5-Large-IP-Adapter's ip-adapter.bin, flattened: official keys and shapes, random fp16 (about
    1.6 GB; `write_state_dict(..., path.bin)` nests it as the official file)."""
    return _random_fp16_state_dict(instantx_sd35_meta_model(), seed=seed)


def instantx_sd35_meta_model() -> torch.nn.Module:
    """The full-size InstantX SD3.5 adapter on the meta device: its shapes, no memory."""
    from decoupled_ipadapter.models.sd3_adapter import SD3IPAdapterModel

    with torch.device("meta"):
        return SD3IPAdapterModel(**INSTANTX_SD35_LARGE_SHAPE)
