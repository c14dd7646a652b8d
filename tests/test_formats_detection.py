"""Official IP-Adapter files (real key names and shapes, random fp16 values) load and are detected exactly.

Every CLIP-based SD1.5 variant in both containers (.safetensors flat, .bin nested); the training-time key prefixes;
the loaded projection against diffusers' own modules built by diffusers' own key conversion; no random
initialisation while building. The SDXL files (700-850 MB each) are checked in one slow test.
"""

import dataclasses
import os
import shutil
import time

import pytest
import torch
from official_shapes import (
    IMAGE_PROJ_SHAPES,
    PARAMETER_COUNT,
    SD15_VARIANTS,
    VARIANTS,
    official_state_dict,
    with_training_prefixes,
    write_official_file,
    write_state_dict,
)

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter

PARITY_RELATIVE_TOLERANCE = 1e-5  # fp32 compute on the same fp16 weights: only summation order differs
PARITY_ERRORS: list[tuple[str, float]] = []  # (case, largest |Δ|), for the run's log


class GeneratedFiles:
    """Official-shape files written once per (variant, container, name) into one folder, deleted after the module."""

    def __init__(self, directory):
        self.directory = directory
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}
        self._paths: dict[tuple, str] = {}

    def tensors(self, variant_name: str) -> dict[str, torch.Tensor]:
        if variant_name not in self._tensors:
            self._tensors[variant_name] = official_state_dict(VARIANTS[variant_name])
        return self._tensors[variant_name]

    def path(self, variant_name: str, container: str = "safetensors", *, file_stem: str | None = None) -> str:
        """The file of `variant_name`'s tensors, named `<file_stem or official name>.<container>`."""
        key = (variant_name, container, file_stem)
        if key not in self._paths:
            folder = self.directory / variant_name  # one folder per set of tensors: names may repeat across them
            folder.mkdir(exist_ok=True)
            stem = file_stem or variant_name
            self._paths[key] = str(write_state_dict(self.tensors(variant_name), folder / f"{stem}.{container}"))
        return self._paths[key]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("official_shapes")
    yield GeneratedFiles(directory)
    shutil.rmtree(directory, ignore_errors=True)  # about 1 GB: do not leave it in pytest's kept temp folders


def assert_same_tensors(model: torch.nn.Module, flat: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert sorted(state) == sorted(flat)
    for key, value in flat.items():
        assert state[key].dtype == torch.float16 and state[key].device.type == "cpu", key
        assert torch.equal(state[key], value), f"{key} differs from the file"


def assert_detected(adapter, variant_name: str, filename: str) -> None:
    variant = VARIANTS[variant_name]
    assert dataclasses.asdict(adapter.spec) == variant.expected_spec()
    assert adapter.source == filename
    assert adapter.spec.layer_count == variant.layer_count
    widths = {number: adapter.model.layer(number).to_k_ip.weight.shape for number in adapter.spec.layer_numbers}
    assert widths == {
        2 * index + 1: (hidden, variant.text_width) for index, hidden in enumerate(variant.hidden_sizes)
    }, "layer widths differ from the real model's"


def assert_official_shapes(flat: dict[str, torch.Tensor], variant_name: str) -> None:
    """The generated tensors against the research note's table (§2.3): shapes, dtype, parameter count."""
    variant = VARIANTS[variant_name]
    for key, shape in IMAGE_PROJ_SHAPES[variant_name].items():
        assert tuple(flat[f"image_proj.{key}"].shape) == shape, key
    for index, hidden in enumerate(variant.hidden_sizes):
        for kind in ("k", "v"):
            assert tuple(flat[f"ip_adapter.{2 * index + 1}.to_{kind}_ip.weight"].shape) == (hidden, variant.text_width)
    assert sum(1 for key in flat if key.startswith("ip_adapter.")) == 2 * variant.layer_count
    assert {value.dtype for value in flat.values()} == {torch.float16}
    assert sum(value.numel() for value in flat.values()) == PARAMETER_COUNT[variant_name]


# --- diffusers as the oracle for the projection ----------------------------------------------------------------


def diffusers_projection(flat: dict[str, torch.Tensor]) -> torch.nn.Module:
    """diffusers' ImageProjection / IPAdapterFullImageProjection / IPAdapterPlusImageProjection, with the file's
    image_proj weights renamed by diffusers' own converter (the one `load_ip_adapter` uses)."""
    from diffusers import UNet2DConditionModel

    image_proj = {key.partition(".")[2]: value for key, value in flat.items() if key.startswith("image_proj.")}
    # An unbound call: with low_cpu_mem_usage=False the converter does not use the UNet instance.
    convert = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers
    return convert(None, image_proj, low_cpu_mem_usage=False).eval()


DIFFUSERS_CLASS = {
    "linear": "ImageProjection",
    "mlp": "IPAdapterFullImageProjection",
    "resampler": "IPAdapterPlusImageProjection",
}


def clip_like_input(variant, generator) -> torch.Tensor:
    if variant.projection == "linear":
        return torch.randn(3, variant.embedding_dim, generator=generator)  # image_embeds [B, E]
    return torch.randn(2, 257, variant.embedding_dim, generator=generator)  # penultimate hidden states [B, S, E]


def check_projection_parity(adapter, flat: dict[str, torch.Tensor], variant_name: str) -> float:
    variant = VARIANTS[variant_name]
    reference = diffusers_projection(flat)
    assert type(reference).__name__ == DIFFUSERS_CLASS[variant.projection]
    x = clip_like_input(variant, torch.Generator().manual_seed(variant.seed))
    with torch.no_grad():
        ours = adapter.model.image_proj(x)
        theirs = reference(x)
    assert ours.shape == theirs.shape == (x.shape[0], variant.num_tokens, variant.text_width)
    assert ours.dtype == torch.float32, "the projection computes in its input's dtype"
    error = (ours - theirs).abs().max().item()
    PARITY_ERRORS.append((variant_name, error))
    tolerance = PARITY_RELATIVE_TOLERANCE * theirs.abs().max().item()
    assert error <= tolerance, f"{variant_name}: largest |Δ| vs diffusers = {error:.3g} (tolerance {tolerance:.3g})"
    return error


# --- SD1.5 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant_name", SD15_VARIANTS)
def test_generated_sd15_files_have_the_official_shapes(files, variant_name):
    assert_official_shapes(files.tensors(variant_name), variant_name)


@pytest.mark.parametrize("container", ["safetensors", "bin"])
@pytest.mark.parametrize("variant_name", SD15_VARIANTS)
def test_sd15_file_loads_and_is_detected_exactly(files, variant_name, container):
    path = files.path(variant_name, container)
    adapter = load_adapter(path)
    assert_detected(adapter, variant_name, f"{variant_name}.{container}")
    assert_same_tensors(adapter.model, files.tensors(variant_name))


def test_the_load_result_says_what_it_found(files):
    plus = load_adapter(files.path("ip-adapter-plus_sd15")).spec.describe()
    assert plus == (
        "ip-adapter-plus_sd15: SD1.5, resampler projection, 16 tokens, "
        "needs the ViT-H image encoder (penultimate hidden states)"
    )
    assert "ViT-bigG image encoder (image embeds)" in load_adapter(files.path("ip-adapter_sd15_vit-G")).spec.describe()


@pytest.mark.parametrize("variant_name", SD15_VARIANTS)
def test_sd15_projection_matches_diffusers(files, variant_name):
    adapter = load_adapter(files.path(variant_name))
    check_projection_parity(adapter, files.tensors(variant_name), variant_name)


@pytest.mark.parametrize(
    "tensors_of, named_as",
    [
        ("ip-adapter_sd15", "ip-adapter_sd15_light"),
        ("ip-adapter_sd15", "ip-adapter_sd15_light_v11"),
        ("ip-adapter_sd15_light", "ip-adapter_sd15"),
        ("ip-adapter-plus_sd15", "ip-adapter-plus-face_sd15"),
        ("ip-adapter-plus-face_sd15", "ip-adapter-plus_sd15"),
    ],
)
def test_light_and_face_are_told_apart_by_the_file_name_only(files, tensors_of, named_as):
    adapter = load_adapter(files.path(tensors_of, file_stem=named_as))
    assert adapter.spec.variant == named_as
    assert dataclasses.asdict(adapter.spec) == VARIANTS[named_as].expected_spec()


@pytest.mark.parametrize("container", ["safetensors", "bin"])
def test_training_checkpoint_prefixes_load(files, tmp_path, container):
    flat = files.tensors("ip-adapter-plus_sd15")
    renamed = with_training_prefixes(flat)
    assert not any(key.startswith(("image_proj.", "ip_adapter.")) for key in renamed)
    path = write_state_dict(renamed, tmp_path / f"ip-adapter-plus_sd15.{container}")
    adapter = load_adapter(str(path))
    assert_detected(adapter, "ip-adapter-plus_sd15", path.name)
    assert_same_tensors(adapter.model, flat)
    path.unlink()  # 98 MB


def _refuse_real_initialisation(function):
    def guarded(tensor, *args, **kwargs):
        if not tensor.is_meta:
            raise AssertionError(f"torch.nn.init.{function.__name__} ran on a real tensor of shape {list(tensor.shape)}")
        return function(tensor, *args, **kwargs)

    return guarded


def test_loading_does_no_random_initialisation(files, monkeypatch):
    """Modules are built on the meta device and take the file's tensors: no init function touches real memory."""
    path = files.path("ip-adapter-plus_sd15")
    for name in dir(torch.nn.init):
        function = getattr(torch.nn.init, name)
        if name.endswith("_") and not name.startswith("_") and callable(function):
            monkeypatch.setattr(torch.nn.init, name, _refuse_real_initialisation(function))
    with pytest.raises(AssertionError, match="ran on a real tensor"):
        torch.nn.Linear(8, 8)  # the guard works: an ordinary module build is caught

    started = time.perf_counter()
    adapter = load_adapter(path)
    elapsed = time.perf_counter() - started
    assert not any(tensor.is_meta for tensor in adapter.model.state_dict().values())
    assert_same_tensors(adapter.model, files.tensors("ip-adapter-plus_sd15"))
    assert elapsed < 10, f"loading a 98 MB file took {elapsed:.1f} s"


# --- SDXL (official sizes: 700-850 MB per file) -----------------------------------------------------------------


@pytest.mark.slow
def test_sdxl_files_load_and_are_detected_exactly(tmp_path):
    """ip-adapter_sdxl, ip-adapter_sdxl_vit-h and ip-adapter-plus_sdxl_vit-h (then renamed to -plus-face), one at
    a time, each deleted once checked."""
    for variant_name, parity in (
        ("ip-adapter_sdxl", True),
        ("ip-adapter_sdxl_vit-h", False),
        ("ip-adapter-plus_sdxl_vit-h", True),
    ):
        flat = official_state_dict(VARIANTS[variant_name])
        assert_official_shapes(flat, variant_name)
        path = write_official_file(variant_name, tmp_path, "safetensors", flat=flat)
        adapter = load_adapter(str(path))
        assert_detected(adapter, variant_name, path.name)
        assert_same_tensors(adapter.model, flat)
        if parity:
            check_projection_parity(adapter, flat, variant_name)
        del adapter
        if variant_name == "ip-adapter-plus_sdxl_vit-h":
            face = path.with_name("ip-adapter-plus-face_sdxl_vit-h.safetensors")
            os.replace(path, face)
            path = face
            adapter = load_adapter(str(path))
            assert_detected(adapter, "ip-adapter-plus-face_sdxl_vit-h", path.name)
            del adapter
        path.unlink()
        del flat
