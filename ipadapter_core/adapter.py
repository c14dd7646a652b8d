"""Loading an adapter file of any family: its family told from the tensors, its model built by that family's room
(without a wasted random initialisation)."""

import os
from dataclasses import dataclass, field

import torch

from .flux.format import FluxAdapterSpec, build_flux_adapter_model, detect_flux_spec, is_flux_adapter_file
from .flux.instantx_format import (
    InstantXFluxSpec,
    build_instantx_flux_adapter_model,
    detect_instantx_flux_spec,
    is_instantx_flux_file,
)
from .formats import IPADAPTER_FILE, adapter_parts, read_weights_file
from .mmdit.format import SD3AdapterSpec, build_sd3_adapter_model, detect_sd3_spec, is_sd3_adapter_file
from .unet.format import AdapterSpec, build_adapter_model, detect_spec, split_lora


@dataclass(frozen=True, eq=False)
class LoadedAdapter:
    """An adapter file, loaded: what it is, its weights, and where it came from."""

    spec: AdapterSpec | FluxAdapterSpec | InstantXFluxSpec | SD3AdapterSpec
    model: torch.nn.Module  # IPAdapterModel, FluxIPAdapterModel (XLabs), InstantXFluxAdapterModel, SD3IPAdapterModel
    source: str  # the file name, for error messages
    lora: dict[str, torch.Tensor] = field(default_factory=dict)  # FaceID files: the UNet LoRA, "N.to_q_lora.down.weight" → …


def load_adapter(path: str) -> LoadedAdapter:
    """Read an adapter file and tell its family from the tensors: XLabs Flux, InstantX Flux, InstantX SD3.5, or a UNet
    (SD1.5/SDXL) file."""
    name = os.path.basename(path)
    content = read_weights_file(path, kind=IPADAPTER_FILE)
    if isinstance(content, dict) and is_flux_adapter_file(content):
        flux_spec = detect_flux_spec(content, name)
        return LoadedAdapter(spec=flux_spec, model=build_flux_adapter_model(flux_spec, content, name), source=name)
    parts = adapter_parts(content, name)
    if is_instantx_flux_file(parts):
        instantx_spec = detect_instantx_flux_spec(parts, name)
        return LoadedAdapter(spec=instantx_spec, model=build_instantx_flux_adapter_model(instantx_spec, parts, name), source=name)
    if is_sd3_adapter_file(parts):
        sd3_spec = detect_sd3_spec(parts, name)
        return LoadedAdapter(spec=sd3_spec, model=build_sd3_adapter_model(sd3_spec, parts, name), source=name)
    parts, lora = split_lora(parts, name)
    spec = detect_spec(parts, path)
    return LoadedAdapter(spec=spec, model=build_adapter_model(spec, parts, name), source=name, lora=lora)
