"""Loading an official IP-Adapter file into `models.IPAdapterModel`, without a wasted random initialisation."""

import os
from dataclasses import dataclass

import torch

from ..models.adapter import IPAdapterModel
from ..models.image_projection import LinearProjection, MLPProjection, Resampler
from .detection import RESAMPLER_DIM_HEAD, AdapterSpec, detect_spec
from .flux.format import FluxAdapterSpec, build_flux_adapter_model, detect_flux_spec, is_flux_adapter_file
from .mmdit.format import SD3AdapterSpec, build_sd3_adapter_model, detect_sd3_spec, is_sd3_adapter_file
from .formats import IPADAPTER_FILE, adapter_parts, read_weights_file, with_adapter_weights

RESAMPLER_FF_MULT = 4


@dataclass(frozen=True, eq=False)
class LoadedAdapter:
    """An adapter file, loaded: what it is, its weights, and where it came from."""

    spec: AdapterSpec | FluxAdapterSpec | SD3AdapterSpec
    model: torch.nn.Module  # IPAdapterModel, FluxIPAdapterModel for a Flux file, SD3IPAdapterModel for SD3.5
    source: str  # the file name, for error messages


def load_adapter(path: str) -> LoadedAdapter:
    """Read an adapter file and tell its family from the tensors: XLabs Flux, InstantX SD3.5, or a UNet (SD1.5/SDXL) file."""
    name = os.path.basename(path)
    content = read_weights_file(path, kind=IPADAPTER_FILE)
    if isinstance(content, dict) and is_flux_adapter_file(content):
        flux_spec = detect_flux_spec(content, name)
        return LoadedAdapter(spec=flux_spec, model=build_flux_adapter_model(flux_spec, content, name), source=name)
    parts = adapter_parts(content, name)
    if is_sd3_adapter_file(parts):
        sd3_spec = detect_sd3_spec(parts, name)
        return LoadedAdapter(spec=sd3_spec, model=build_sd3_adapter_model(sd3_spec, parts, name), source=name)
    spec = detect_spec(parts, path)
    return LoadedAdapter(spec=spec, model=build_adapter_model(spec, parts, name), source=name)


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
