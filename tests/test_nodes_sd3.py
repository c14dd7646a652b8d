"""The nodes with an InstantX SD3.5 IP-Adapter: Load detects the family (.bin read as weights only), Encode checks
the encoder (SigLIP so400m, penultimate hidden states) and uses the reference's negative (zero embeds), Apply
patches an SD3 model's joint blocks and refuses mixed families with a message naming both."""

import pytest
import torch
from safetensors.torch import save_file
from test_nodes import run
from tiny_clip_vision import tiny_clip_vision, tiny_siglip_vision
from tiny_flux import tiny_flux_config, tiny_flux_model, xlabs_adapter_state_dict
from tiny_models import nested
from tiny_sd3 import SIGLIP_WIDTH, instantx_adapter_state_dict, tiny_sd3_config, tiny_sd3_model

from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

CONFIG = tiny_sd3_config()
PENULTIMATE = "penultimate_hidden_states"


@pytest.fixture(scope="module")
def sd3_nodes(comfy_host, tmp_path_factory):
    import folder_paths

    from decoupled_ipadapter.nodes import apply, encode, loader

    root = tmp_path_factory.mktemp("sd3_ipadapter")
    weights = instantx_adapter_state_dict(hidden_size=CONFIG["depth"] * 64, joint_blocks=CONFIG["depth"], seed=3)
    torch.save(nested(weights), str(root / "sd35-ip-adapter.bin"))
    save_file(xlabs_adapter_state_dict(hidden_size=256, double_blocks=2, seed=4), str(root / "flux-for-sd3-test.safetensors"))
    folder_paths.add_model_folder_path("ipadapter", str(root))
    yield {"load": loader.LoadIPAdapter, "encode": encode.EncodeImage, "apply": apply.ApplyIPAdapter}
    folder_paths.folder_names_and_paths["ipadapter"][0].remove(str(root))


@pytest.fixture(scope="module")
def sd3_adapter(sd3_nodes):
    (managed,) = run(sd3_nodes["load"], ipadapter_name="sd35-ip-adapter.bin")
    return managed


def sd3_embeds():
    return make_embeds(torch.randn(1, 5, SIGLIP_WIDTH), torch.zeros(1, 5, SIGLIP_WIDTH), clip_output=PENULTIMATE)


def test_loader_detects_the_sd3_family_from_the_bin_file(sd3_adapter):
    spec = sd3_adapter.adapter.spec
    assert (spec.variant, spec.base, spec.image_encoder, spec.joint_blocks) == ("instantx-sd3.5-large-ip-adapter", "SD3.5", "SigLIP", 3)
    assert sd3_adapter.weights_patcher.model is sd3_adapter.adapter.model


def test_encode_reads_siglip_penultimate_states_with_zero_embeds_as_negative(sd3_nodes, sd3_adapter, tmp_path):
    clip_vision = tiny_siglip_vision(tmp_path)
    image = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    (embeds,) = run(sd3_nodes["encode"], ipadapter=sd3_adapter, clip_vision=clip_vision, image=image)
    with torch.inference_mode():
        positive = clip_vision.encode_image(image, crop=True)["penultimate_hidden_states"]
    assert embeds.clip_output == PENULTIMATE and torch.equal(embeds.positive, positive)
    assert positive.shape[-1] == SIGLIP_WIDTH and positive.abs().max() > 0
    assert embeds.negative.shape == positive.shape and not embeds.negative.any()  # zeros_like, as the SD3 pipeline


def test_encode_uses_a_given_negative_image(sd3_nodes, sd3_adapter, tmp_path):
    clip_vision = tiny_siglip_vision(tmp_path)
    image, negative_image = torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3)
    (embeds,) = run(sd3_nodes["encode"], ipadapter=sd3_adapter, clip_vision=clip_vision, image=image, negative_image=negative_image)
    with torch.inference_mode():
        negative = clip_vision.encode_image(negative_image, crop=True)["penultimate_hidden_states"]
    assert torch.equal(embeds.negative, negative)


@pytest.mark.parametrize("encoder", ["ViT-H", "ViT-L"])
def test_encode_refuses_a_clip_encoder_naming_the_siglip_file(sd3_nodes, sd3_adapter, tmp_path, encoder):
    clip_vision = tiny_clip_vision(encoder, tmp_path)
    with pytest.raises(IPAdapterError, match=rf"IPAdapter Encode Image: .*needs the SigLIP so400m .*is CLIP {encoder}\. Load sigclip_vision_patch14_384\.safetensors"):
        run(sd3_nodes["encode"], ipadapter=sd3_adapter, clip_vision=clip_vision, image=torch.rand(1, 32, 32, 3))


def test_encode_refuses_siglip_for_a_clip_adapter(sd3_nodes, tmp_path):
    (flux,) = run(sd3_nodes["load"], ipadapter_name="flux-for-sd3-test.safetensors")
    with pytest.raises(IPAdapterError, match=r"IPAdapter Encode Image: .*needs the ViT-L CLIP image encoder, but the connected vision model has no CLIP image projection"):
        run(sd3_nodes["encode"], ipadapter=flux, clip_vision=tiny_siglip_vision(tmp_path), image=torch.rand(1, 32, 32, 3))


def test_apply_patches_every_joint_block_of_an_sd3_model(sd3_nodes, sd3_adapter):
    from decoupled_ipadapter.ipadapter_core.mmdit.patch import JointBlockPatch

    model = tiny_sd3_model(CONFIG, seed=1)
    (patched,) = run(sd3_nodes["apply"], model=model, ipadapter=sd3_adapter, embeds=sd3_embeds(), weight=0.7, start_at=0.0, end_at=1.0)
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", index) for index in range(CONFIG["depth"])}
    assert all(isinstance(patch, JointBlockPatch) and patch.terms[0].weight == 0.7 for patch in dit.values())
    assert "transformer_options" not in model.model_options or not model.model_options["transformer_options"].get("patches_replace")
    (twice,) = run(sd3_nodes["apply"], model=patched, ipadapter=sd3_adapter, embeds=sd3_embeds(), weight=0.5, start_at=0.0, end_at=1.0)
    stacked = twice.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    assert [term.weight for term in stacked.terms] == [0.7, 0.5]


def test_apply_refuses_clip_embeds_and_a_bad_step_range(sd3_nodes, sd3_adapter):
    model = tiny_sd3_model(CONFIG, seed=1)
    clip_embeds = make_embeds(torch.randn(1, 1024), torch.zeros(1, 1024), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match="Apply IPAdapter: 'sd35-ip-adapter.bin' .*reads the CLIP penultimate hidden states"):
        run(sd3_nodes["apply"], model=model, ipadapter=sd3_adapter, embeds=clip_embeds, weight=1.0, start_at=0.0, end_at=1.0)
    with pytest.raises(IPAdapterError, match="start_at"):
        run(sd3_nodes["apply"], model=model, ipadapter=sd3_adapter, embeds=sd3_embeds(), weight=1.0, start_at=0.8, end_at=0.2)


def test_apply_refuses_a_flux_adapter_on_sd3_and_the_reverse(sd3_nodes, sd3_adapter):
    (flux,) = run(sd3_nodes["load"], ipadapter_name="flux-for-sd3-test.safetensors")
    flux_embeds = make_embeds(torch.randn(1, 768), torch.zeros(1, 768), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match="Apply IPAdapter: 'flux-for-sd3-test.safetensors' is a Flux IP-Adapter but it was applied to an SD3 model"):
        run(sd3_nodes["apply"], model=tiny_sd3_model(CONFIG, seed=1), ipadapter=flux, embeds=flux_embeds, weight=1.0, start_at=0.0, end_at=1.0)
    with pytest.raises(IPAdapterError, match="Apply IPAdapter: 'sd35-ip-adapter.bin' is an SD3.5 IP-Adapter but it was applied to a model that is not SD3"):
        run(sd3_nodes["apply"], model=tiny_flux_model(tiny_flux_config(), seed=1), ipadapter=sd3_adapter, embeds=sd3_embeds(), weight=1.0, start_at=0.0, end_at=1.0)


def test_apply_refuses_a_unet_adapter_on_an_sd3_model(sd3_nodes, tmp_path):
    from tiny_models import adapter_state_dict, layer_hidden_sizes, tiny_comfy_model

    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.memory import manage

    hidden_sizes = layer_hidden_sizes(tiny_comfy_model("SD1.5", seed=0))
    save_file(adapter_state_dict("linear", hidden_sizes=hidden_sizes, text_width=768, seed=1), str(tmp_path / "sd15.safetensors"))
    sd15 = manage(load_adapter(str(tmp_path / "sd15.safetensors")))
    embeds = make_embeds(torch.randn(1, 1024), torch.zeros(1, 1024), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match="Apply IPAdapter: 'sd15.safetensors' is an SD1.5 IP-Adapter but it was applied to an SD3 model"):
        run(sd3_nodes["apply"], model=tiny_sd3_model(CONFIG, seed=1), ipadapter=sd15, embeds=embeds, weight=1.0, start_at=0.0, end_at=1.0)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"weight_type": "style transfer"}, "weight_type 'style transfer'"),
        ({"block_weights": "0:1.0"}, 'block_weights "0:1.0"'),
        ({"composition_weight": 0.5}, "composition_weight 0.5"),
    ],
)
def test_apply_refuses_the_advanced_options_on_sd3(sd3_adapter, options, named):
    from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt

    model = tiny_sd3_model(CONFIG, seed=1)
    with pytest.raises(IPAdapterError, match=f"The SD3.5 IP-Adapter does not take {named}"):
        apply_image_prompt(model, sd3_adapter.adapter, sd3_adapter.weights_patcher, sd3_embeds(), weight=1.0, start_at=0.0, end_at=1.0, **options)


def test_apply_at_weight_zero_patches_no_joint_block(sd3_nodes, sd3_adapter):
    model = tiny_sd3_model(CONFIG, seed=1)
    (patched,) = run(sd3_nodes["apply"], model=model, ipadapter=sd3_adapter, embeds=sd3_embeds(), weight=0.0, start_at=0.0, end_at=1.0)
    assert not patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit")


def second_import_of_the_pack(name: str):
    """The pack imported a second time under another package name, as when two folders hold it: its classes are not
    the classes of `decoupled_ipadapter`."""
    import importlib
    import sys
    import types
    from pathlib import Path

    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(Path(__file__).resolve().parents[1])]
        sys.modules[name] = package
    importlib.import_module(f"{name}.ipadapter_core.memory")
    importlib.import_module(f"{name}.ipadapter_core.apply")
    return importlib.import_module(f"{name}.ipadapter_core")


def test_stacking_keeps_both_prompts_when_the_pack_is_imported_twice(sd3_nodes, sd3_adapter):
    import folder_paths

    other_import = second_import_of_the_pack("decoupled_ipadapter_second_copy")
    path = folder_paths.get_full_path("ipadapter", "sd35-ip-adapter.bin")
    other_adapter = other_import.memory.manage(other_import.adapter.load_adapter(path))
    model = tiny_sd3_model(CONFIG, seed=1)
    first = other_import.apply.apply_image_prompt(
        model, other_adapter.adapter, other_adapter.weights_patcher, sd3_embeds(), weight=0.7, start_at=0.0, end_at=1.0
    )
    (second,) = run(sd3_nodes["apply"], model=first, ipadapter=sd3_adapter, embeds=sd3_embeds(), weight=0.5, start_at=0.0, end_at=1.0)
    dit = second.model_options["transformer_options"]["patches_replace"]["dit"]
    for patch in dit.values():
        # one patch holding both terms: the earlier patch is not kept as another pack's block, which would never
        # call our block (its original_block) and so drop the later term
        assert [term.weight for term in patch.terms] == [0.7, 0.5] and patch.base is None
