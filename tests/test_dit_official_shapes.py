"""The DiT adapters at their official sizes (real key names and shapes, random fp16 values): the XLabs Flux file
(about 980 MB) and the InstantX SD3.5-Large file (about 1.6 GB) are written to a temporary folder, loaded and
detected (slow tests); the SD3.5 detection also runs on the shapes alone (meta tensors, no memory)."""

import dataclasses

import pytest
import torch
from official_shapes import (
    INSTANTX_FLUX_SHAPE,
    INSTANTX_SD35_LARGE_SHAPE,
    XLABS_FLUX_SHAPE,
    instantx_flux_meta_model,
    instantx_sd35_meta_model,
    instantx_sd35_official_state_dict,
    write_state_dict,
    xlabs_flux_official_state_dict,
)
from tiny_models import nested

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.flux.instantx_format import detect_instantx_flux_spec, is_instantx_flux_file
from decoupled_ipadapter.ipadapter_core.mmdit.format import detect_sd3_spec

SD35_SPEC = dict(
    variant="instantx-sd3.5-large-ip-adapter", num_tokens=64, embedding_dim=1152, hidden_size=2432, head_dim=64,
    joint_blocks=38, resampler_dim=1280, resampler_depth=4, resampler_heads=20, timestep_dim=320, base="SD3.5",
    projection="timestep resampler", image_encoder="SigLIP", clip_output="penultimate_hidden_states",
)  # fmt: skip
FLUX_SPEC = dict(
    variant="xlabs-flux-ip-adapter", num_tokens=4, embedding_dim=768, context_dim=4096, hidden_size=3072,
    double_blocks=19, base="Flux", projection="linear", image_encoder="ViT-L", clip_output="image_embeds",
    black_negative_image=True,
)  # fmt: skip


def assert_same_tensors(model: torch.nn.Module, flat: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(flat)
    assert all(torch.equal(loaded[key], flat[key]) for key in flat)


def test_sd35_shapes_are_detected_without_memory(comfy_host):
    """The full-size InstantX layout (38 joint blocks, 2432 wide, resampler 1280/4/20/64) from meta tensors."""
    meta = instantx_sd35_meta_model().state_dict()
    assert all(tensor.is_meta for tensor in meta.values())
    spec = detect_sd3_spec(nested(meta), "ip-adapter.bin")
    assert dataclasses.asdict(spec) == SD35_SPEC
    assert spec.hidden_size == INSTANTX_SD35_LARGE_SHAPE["hidden_size"]
    parameters = sum(tensor.numel() for tensor in meta.values())
    assert 780e6 < parameters < 800e6, parameters  # about 1.6 GB in fp16


def test_instantx_flux_shapes_are_detected_without_memory(comfy_host):
    """The full-size InstantX FLUX.1-dev layout (128 tokens of 4096, 19 + 38 blocks of 3072) from meta tensors: the
    official file (5.3 GB) is too large to write in the tests."""
    meta = instantx_flux_meta_model().state_dict()
    assert all(tensor.is_meta for tensor in meta.values())
    parts = nested(meta)
    assert is_instantx_flux_file(parts)
    spec = detect_instantx_flux_spec(parts, "ip-adapter.bin")
    assert dataclasses.asdict(spec) == dict(
        variant="instantx-flux.1-dev-ip-adapter", num_tokens=128, embedding_dim=1152, inner_dim=2304, context_dim=4096,
        hidden_size=3072, layers=57, base="Flux", projection="mlp", image_encoder="SigLIP", clip_output="siglip_pooled_output",
    )  # fmt: skip
    assert spec.hidden_size == INSTANTX_FLUX_SHAPE["hidden_size"]
    parameters = sum(tensor.numel() for tensor in meta.values())
    assert 2.6e9 < parameters < 2.7e9, parameters  # about 5.3 GB in fp16, as the official file


@pytest.mark.slow
def test_full_size_instantx_sd35_bin_loads_and_is_detected(comfy_host, tmp_path):
    flat = instantx_sd35_official_state_dict()
    path = write_state_dict(flat, tmp_path / "ip-adapter.bin")  # nested, through torch.save, as the official file
    adapter = load_adapter(str(path))
    assert dataclasses.asdict(adapter.spec) == SD35_SPEC
    assert_same_tensors(adapter.model, flat)
    path.unlink()


@pytest.mark.slow
def test_full_size_xlabs_flux_file_loads_and_is_detected(comfy_host, tmp_path):
    flat = xlabs_flux_official_state_dict()
    path = write_state_dict(flat, tmp_path / "ip_adapter.safetensors")
    adapter = load_adapter(str(path))
    assert dataclasses.asdict(adapter.spec) == FLUX_SPEC
    assert (adapter.spec.double_blocks, adapter.spec.hidden_size) == (XLABS_FLUX_SHAPE["double_blocks"], 3072)
    assert_same_tensors(adapter.model, flat)
    path.unlink()
