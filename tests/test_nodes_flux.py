"""The nodes with an XLabs Flux IP-Adapter: Load detects the family, Encode checks the encoder (CLIP ViT-L/14) and
uses the reference's negative (a black picture), Apply patches a Flux model's double blocks and refuses mixed
families with a message naming both."""

import pytest
import torch
from safetensors.torch import save_file
from test_nodes import run
from tiny_clip_vision import tiny_clip_vision
from tiny_flux import tiny_flux_config, tiny_flux_model, xlabs_adapter_state_dict
from tiny_models import adapter_state_dict, layer_hidden_sizes, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

CONFIG = tiny_flux_config()


@pytest.fixture(scope="module")
def flux_nodes(comfy_host, tmp_path_factory):
    import folder_paths

    from decoupled_ipadapter.nodes import apply, encode, loader

    root = tmp_path_factory.mktemp("flux_ipadapter")
    weights = xlabs_adapter_state_dict(hidden_size=CONFIG["hidden_size"], double_blocks=CONFIG["depth"], seed=3)
    save_file(weights, str(root / "flux-ip-adapter.safetensors"))
    folder_paths.add_model_folder_path("ipadapter", str(root))
    yield {"load": loader.LoadIPAdapter, "encode": encode.EncodeImage, "apply": apply.ApplyIPAdapter, "advanced": apply.ApplyIPAdapterAdvanced}
    folder_paths.folder_names_and_paths["ipadapter"][0].remove(str(root))


@pytest.fixture(scope="module")
def flux_adapter(flux_nodes):
    (managed,) = run(flux_nodes["load"], ipadapter_name="flux-ip-adapter.safetensors")
    return managed


def test_loader_detects_the_flux_family(flux_adapter):
    spec = flux_adapter.adapter.spec
    assert (spec.variant, spec.base, spec.image_encoder, spec.double_blocks) == ("xlabs-flux-ip-adapter", "Flux", "ViT-L", 2)
    assert flux_adapter.weights_patcher.model is flux_adapter.adapter.model


def test_encode_reads_vit_l_image_embeds_with_a_black_picture_as_negative(flux_nodes, flux_adapter, tmp_path):
    clip_vision = tiny_clip_vision("ViT-L", tmp_path)
    image = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(0))
    (embeds,) = run(flux_nodes["encode"], ipadapter=flux_adapter, clip_vision=clip_vision, image=image)
    with torch.inference_mode():
        black = clip_vision.encode_image(torch.zeros(1, 32, 32, 3), crop=True)["image_embeds"]
        positive = clip_vision.encode_image(image, crop=True)["image_embeds"]
    assert torch.equal(embeds.positive, positive)
    assert torch.equal(embeds.negative, black) and black.abs().max() > 0  # not a zero embedding


@pytest.mark.parametrize("encoder", ["ViT-H", "ViT-bigG"])
def test_encode_refuses_another_encoder_naming_the_vit_l_file(flux_nodes, flux_adapter, tmp_path, encoder):
    clip_vision = tiny_clip_vision(encoder, tmp_path)
    with pytest.raises(IPAdapterError, match=rf"IPAdapter Encode Image: .*needs the ViT-L .*is {encoder}\. Load clip_vision_l\.safetensors"):
        run(flux_nodes["encode"], ipadapter=flux_adapter, clip_vision=clip_vision, image=torch.rand(1, 32, 32, 3))


def test_apply_patches_every_double_block_of_a_flux_model(flux_nodes, flux_adapter):
    from decoupled_ipadapter.ipadapter_core.flux.patch import DoubleBlockPatch

    model = tiny_flux_model(CONFIG, seed=1)
    embeds = make_embeds(torch.randn(1, 768), torch.zeros(1, 768), clip_output="image_embeds")
    (patched,) = run(flux_nodes["apply"], model=model, ipadapter=flux_adapter, embeds=embeds, weight=0.7, start_at=0.0, end_at=1.0)
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    assert set(dit) == {("double_block", index) for index in range(CONFIG["depth"])}
    assert all(isinstance(patch, DoubleBlockPatch) and patch.terms[0].weight == 0.7 for patch in dit.values())
    assert "transformer_options" not in model.model_options or not model.model_options["transformer_options"].get("patches_replace")


def test_apply_refuses_a_unet_adapter_on_a_flux_model_and_the_reverse(flux_nodes, flux_adapter, tmp_path):
    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.memory import manage

    unet = tiny_comfy_model("SD1.5", seed=0)
    save_file(adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(unet), text_width=768, seed=1), str(tmp_path / "sd15.safetensors"))
    sd15 = manage(load_adapter(str(tmp_path / "sd15.safetensors")))
    embeds = make_embeds(torch.randn(1, 1024), torch.zeros(1, 1024), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match="Apply IPAdapter: 'sd15.safetensors' is an SD1.5 IP-Adapter but it was applied to a Flux model"):
        run(flux_nodes["apply"], model=tiny_flux_model(CONFIG, seed=1), ipadapter=sd15, embeds=embeds, weight=1.0, start_at=0.0, end_at=1.0)
    flux_embeds = make_embeds(torch.randn(1, 768), torch.zeros(1, 768), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match="Apply IPAdapter: .*Flux IP-Adapter but it was applied to a model that is not Flux"):
        run(flux_nodes["apply"], model=unet, ipadapter=flux_adapter, embeds=flux_embeds, weight=1.0, start_at=0.0, end_at=1.0)


def test_apply_refuses_a_composition_weight_on_flux(flux_nodes, flux_adapter):
    embeds = make_embeds(torch.randn(1, 768), torch.zeros(1, 768), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match="The Flux IP-Adapter does not take composition_weight 0.5"):
        run(
            flux_nodes["advanced"], model=tiny_flux_model(CONFIG, seed=1), ipadapter=flux_adapter, embeds=embeds, weight=1.0,
            start_at=0.0, end_at=1.0, weight_type="linear", embeds_scaling="V only", block_weights="", composition_weight=0.5,
        )  # fmt: skip


def test_a_unet_adapter_with_a_weight_type_on_flux_is_told_the_family_first(flux_nodes, tmp_path):
    """The family is checked before the options: an SD1.5 file with a UNet weight type on Flux is told that it is an
    SD1.5 adapter, not that the Flux adapter takes no weight_type."""
    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.memory import manage

    unet = tiny_comfy_model("SD1.5", seed=0)
    save_file(adapter_state_dict("linear", hidden_sizes=layer_hidden_sizes(unet), text_width=768, seed=1), str(tmp_path / "sd15.safetensors"))
    sd15 = manage(load_adapter(str(tmp_path / "sd15.safetensors")))
    embeds = make_embeds(torch.randn(1, 1024), torch.zeros(1, 1024), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match="'sd15.safetensors' is an SD1.5 IP-Adapter but it was applied to a Flux model"):
        run(
            flux_nodes["advanced"], model=tiny_flux_model(CONFIG, seed=1), ipadapter=sd15, embeds=embeds, weight=1.0,
            start_at=0.0, end_at=1.0, weight_type="style transfer", embeds_scaling="V only", block_weights="",
        )  # fmt: skip
