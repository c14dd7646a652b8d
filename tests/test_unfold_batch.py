"""unfold_batch and a weight per latent (ipadapter_core/unfold.py), on the tiny SD1.5 UNet through the attn2 patch.

The oracle is the plain path itself: latent j of a per-latent run must equal a run of latent j alone with a scalar
weight w_j and, under unfold, reference image j as a one-image prompt (whole UNet outputs, both chunks of a cfg
batch). Context windows (AnimateDiff-Evolved's ad_params, ComfyUI's context_window) pick images and weights by the
window's latent indices; Flux and bad weights are refused naming the input.
"""

import pytest
import torch
from comfy_sampling_helpers import close, image_embeds, linear_adapter, sample, text_width
from test_nodes import run
from test_nodes_flux import CONFIG, flux_adapter, flux_nodes  # noqa: F401  (fixtures)
from tiny_flux import tiny_flux_model
from tiny_models import faceid_adapter_state_dict, layer_hidden_sizes, tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.encoders import FACE_EMBEDDING, PENULTIMATE
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.memory import manage
from decoupled_ipadapter.ipadapter_core.unet.layer_map import cross_attention_layers

LATENTS = 3
CHUNKS = (1, 0)  # [uncond, cond], as KSampler batches them


@pytest.fixture(scope="module")
def sd15(comfy_host):
    model = tiny_comfy_model("SD1.5", seed=5)
    return model, linear_adapter(model, seed=6)


def batch_inputs(model, *, seed: int = 7, chunks=CHUNKS):
    """LATENTS latents and a text for each chunk, as one batch `[chunks·LATENTS, …]`."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(LATENTS, 4, 8, 8, generator=generator).repeat(len(chunks), 1, 1, 1)  # [chunks·L, 4, h, w]
    texts = torch.randn(len(chunks), 1, 77, text_width(model), generator=generator)  # [chunks, 1, 77, C]
    text = texts.repeat_interleave(LATENTS, dim=0).reshape(len(chunks) * LATENTS, 77, -1)  # [chunks·L, 77, C]
    return x, text


def forward(model, x, text, *, chunks=CHUNKS, **transformer_options) -> torch.Tensor:
    options = dict(model.model_options.get("transformer_options", {}))
    options.update(cond_or_uncond=list(chunks), sigmas=torch.ones(x.shape[0]), **transformer_options)
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps=torch.full((x.shape[0],), 500.0), context=text, transformer_options=options)


def rows_of(latent: int, *, chunks=CHUNKS) -> list[int]:
    """The rows of one latent in every chunk of the batch."""
    return [chunk * LATENTS + latent for chunk in range(len(chunks))]


def apply(model, managed, embeds, **options):
    options = {"weight": 1.0, "start_at": 0.0, "end_at": 1.0, **options}
    return apply_image_prompt(model, managed.adapter, managed.weights_patcher, embeds, **options)


def one_image(embeds, index: int):
    return make_embeds(embeds.positive[index : index + 1], embeds.negative[index : index + 1], clip_output=embeds.clip_output)


def check_latents(model, managed, embeds, ours_options: dict, expected_of, *, chunks=CHUNKS, **transformer_options):
    """Latent j of one per-latent run equals the run of latent j alone with `expected_of(j)` (embeds, options)."""
    x, text = batch_inputs(model, chunks=chunks)
    ours = forward(apply(model, managed, embeds, **ours_options), x, text, chunks=chunks, **transformer_options)
    assert not close(ours[rows_of(0, chunks=chunks)], ours[rows_of(1, chunks=chunks)], relative=1e-3), "the latents must differ"
    for latent in range(LATENTS):
        alone_embeds, alone_options = expected_of(latent)
        rows = rows_of(latent, chunks=chunks)
        alone = forward(apply(model, managed, alone_embeds, **alone_options), x[rows], text[rows], chunks=chunks)
        assert close(ours[rows], alone), f"latent {latent}: {(ours[rows] - alone).abs().max()}"


@pytest.mark.parametrize("chunks", [CHUNKS, (0, 1, 2)])  # cfg; three conditionings (DualCFG's, PerpNeg's)
def test_unfold_gives_latent_j_image_j_and_repeats_the_last(sd15, chunks):
    model, managed = sd15
    three, two = image_embeds(11, images=3), image_embeds(12, images=2)
    check_latents(
        model, managed, three, {"unfold_batch": True, "weight": 0.8}, lambda j: (one_image(three, j), {"weight": 0.8}),
        chunks=chunks,
    )  # fmt: skip
    check_latents(model, managed, two, {"unfold_batch": True}, lambda j: (one_image(two, min(j, 1)), {}), chunks=chunks)


def test_unfold_with_one_image_is_the_plain_path_exactly(sd15):
    model, managed = sd15
    x, text = batch_inputs(model)
    embeds = image_embeds(13)
    for options in ({}, {"embeds_scaling": "K+V", "weight": 0.6}):
        plain = forward(apply(model, managed, embeds, **options), x, text)
        unfolded = forward(apply(model, managed, embeds, unfold_batch=True, **options), x, text)
        assert torch.equal(plain, unfolded)


@pytest.mark.parametrize("options", [
    {"embeds_scaling": "V only"},
    {"embeds_scaling": "K+V"},
    {"embeds_scaling": "K+mean(V) w/ C penalty", "weight_type": "ease in"},
    {"weight_type": "style and composition", "composition_weight": 0.5},
])  # fmt: skip
def test_a_weight_list_gives_latent_j_weight_j(sd15, options):
    model, managed = sd15
    embeds = image_embeds(14, images=2)  # one prompt of two images for every latent
    weights = [0.3, 1.7]  # the last repeats for latent 2
    for unfold in (False, True):
        check_latents(
            model, managed, embeds, {**options, "weight": weights, "unfold_batch": unfold},
            lambda j: (one_image(embeds, min(j, 1)) if unfold else embeds, {**options, "weight": weights[min(j, 1)]}),
        )  # fmt: skip


def test_a_list_of_zeros_patches_nothing_and_a_list_of_one_is_its_number(sd15):
    model, managed = sd15
    embeds = image_embeds(15)
    patches = apply(model, managed, embeds, weight=[0.0, 0.0]).model_options.get("transformer_options", {}).get("patches_replace", {})
    assert not patches.get("attn2"), "a term whose every weight is 0 must not patch any layer"
    x, text = batch_inputs(model)
    assert torch.equal(forward(apply(model, managed, embeds, weight=[0.7]), x, text), forward(apply(model, managed, embeds, weight=0.7), x, text))


@pytest.mark.parametrize("window", ["ad_params", "context_window"])
def test_a_context_window_picks_images_and_weights_by_its_indices(sd15, window):
    from comfy.context_windows import IndexListContextWindow

    model, managed = sd15
    embeds = image_embeds(16, images=3)
    weights = [0.2, 0.4, 0.6, 0.8, 1.0]
    indices = [1, 2, 4]  # a window of LATENTS latents of a batch of 6: images 1, 2, 2; weights 0.4, 0.6, 1.0
    extra = (
        {"ad_params": {"sub_idxs": indices, "full_length": 6}}
        if window == "ad_params"
        else {"context_window": IndexListContextWindow(indices, dim=0)}
    )
    check_latents(
        model, managed, embeds, {"weight": weights, "unfold_batch": True},
        lambda j: (one_image(embeds, min(indices[j], 2)), {"weight": weights[indices[j]]}), **extra,
    )  # fmt: skip


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # ComfyUI's own context_windows.py
def test_comfyui_context_windows_through_the_sampler(sd15):
    """ComfyUI's own Context Windows node (batched windows of 2 on a batch of 4, no overlap): the second window's
    latents sample as a batch of 2 holding latents 2 and 3 alone, with images 2 and 3 and weights 2 and 3."""
    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    model, managed = sd15
    embeds = image_embeds(23, images=4)
    weights = [1.0, 0.8, 0.6, 1.4]
    windowed = ContextWindowsManualNode.execute(model, 2, 0, "batched", 1, False, "flat", 0).result[0]
    # ComfyUI 0.3.75 finds the step by comparing its sigmas (steps + 1) with the per-row timestep element-wise, which
    # works on a batch (dim 0) only where the batch is steps + 1 long: 3 steps for 4 latents
    batch = sample(apply(windowed, managed, embeds, unfold_batch=True, weight=weights), cfg=2.0, steps=3, batch=4)
    second = make_embeds(embeds.positive[2:], embeds.negative[2:], clip_output=embeds.clip_output)
    alone = sample(apply(model, managed, second, unfold_batch=True, weight=weights[2:]), cfg=2.0, steps=3, batch=2)
    assert close(batch[2:], alone)


def test_unfold_with_a_mask_per_image_masks_each_latent(sd15):
    model, managed = sd15
    embeds = image_embeds(17, images=2)
    masks = torch.zeros(2, 64, 64)
    masks[0, :, :32], masks[1, 20:, :] = 1.0, 0.5
    check_latents(
        model, managed, embeds, {"unfold_batch": True, "attn_mask": masks},
        lambda j: (one_image(embeds, min(j, 1)), {"attn_mask": masks[min(j, 1)]}),
    )  # fmt: skip


def test_unfold_takes_one_mask_or_one_per_image_not_groups(sd15):
    """Without unfold, 2 masks over 4 images are groups of 2 (IPAdapter Tiles); under unfold image j is latent j's
    alone, so only 1 or 4 masks mean something."""
    model, managed = sd15
    embeds = image_embeds(19, images=4)
    masks = torch.ones(2, 64, 64)
    apply(model, managed, embeds, attn_mask=masks)  # groups: accepted
    with pytest.raises(IPAdapterError, match=r"attn_mask holds 2 masks .* unfold_batch on"):
        apply(model, managed, embeds, attn_mask=masks, unfold_batch=True)
    apply(model, managed, embeds, attn_mask=torch.ones(4, 64, 64), unfold_batch=True)


def test_a_weight_list_with_a_mask_per_image_of_one_prompt(sd15):
    model, managed = sd15
    embeds = image_embeds(21, images=2)
    masks = torch.zeros(2, 64, 64)
    masks[0, :40], masks[1, :, 16:] = 1.0, 1.0
    weights = [1.2, 0.0, 0.6]
    check_latents(
        model, managed, embeds, {"weight": weights, "attn_mask": masks, "embeds_scaling": "K+V"},
        lambda j: (embeds, {"weight": weights[j], "attn_mask": masks, "embeds_scaling": "K+V"}),
    )  # fmt: skip


def test_moving_context_windows_keep_one_cache_entry_per_layer(sd15):
    """AnimateDiff's windows move from step to step: the K'/V' cache must not grow with them."""
    model, managed = sd15
    patched = apply(model, managed, image_embeds(22, images=4), unfold_batch=True, weight=[0.5, 1.0])
    x, text = batch_inputs(model)
    (term,) = {patch.terms[0] for patch in patched.model_options["transformer_options"]["patches_replace"]["attn2"].values()}
    sizes = []
    for start in range(3):
        forward(patched, x, text, ad_params={"sub_idxs": list(range(start, start + LATENTS)), "full_length": 8})
        sizes.append(len(term._keys_values[(torch.device("cpu"), torch.float32)]))
    assert sizes[0] == sizes[-1] == len(cross_attention_layers(model.model.diffusion_model))


@pytest.mark.parametrize("kind", ["faceid", "plus"])
def test_unfold_with_faceid_embeds(comfy_host, tmp_path, kind):
    model = tiny_comfy_model("SD1.5", seed=8)
    parts = faceid_adapter_state_dict(kind, hidden_sizes=layer_hidden_sizes(model), text_width=text_width(model), seed=9, lora=False)
    name = "ip-adapter-faceid_sd15.bin" if kind == "faceid" else "ip-adapter-faceid-plusv2_sd15.bin"
    torch.save(parts, str(tmp_path / name))
    managed = manage(load_adapter(str(tmp_path / name)))
    generator = torch.Generator().manual_seed(10)
    faces = torch.nn.functional.normalize(torch.randn(LATENTS, 512, generator=generator), dim=-1)
    if kind == "faceid":
        embeds = make_embeds(faces, torch.zeros(1, 512), clip_output=FACE_EMBEDDING)

        def alone(j):
            return make_embeds(faces[j : j + 1], torch.zeros(1, 512), clip_output=FACE_EMBEDDING)
    else:
        hidden = torch.randn(LATENTS, 257, 1280, generator=generator)
        uncond = torch.randn(1, 257, 1280, generator=generator)
        embeds = make_embeds(hidden, uncond, clip_output=PENULTIMATE, face_positive=faces, face_negative=torch.zeros(1, 512))

        def alone(j):
            return make_embeds(hidden[j : j + 1], uncond, clip_output=PENULTIMATE, face_positive=faces[j : j + 1], face_negative=torch.zeros(1, 512))

    check_latents(model, managed, embeds, {"unfold_batch": True, "weight": 0.9}, lambda j: (alone(j), {"weight": 0.9}))


def test_through_the_sampler_stacked_with_a_plain_apply(sd15):
    """KSampler's path (the guider's chunks, the pass wrappers): latent j of an unfolded batch under a second, plain
    Apply equals sampling latent j alone with image j under the same plain Apply."""
    model, managed = sd15
    embeds, plain = image_embeds(18, images=2), image_embeds(19)
    base = apply(model, managed, plain, weight=0.5)
    batch = sample(apply(base, managed, embeds, unfold_batch=True, weight=[1.0, 0.4]), cfg=2.0, batch=2)
    for latent, weight in ((0, 1.0), (1, 0.4)):
        alone = sample(apply(base, managed, one_image(embeds, latent), weight=weight), cfg=2.0)
        assert close(batch[latent : latent + 1], alone), f"latent {latent}"


@pytest.mark.parametrize("weight, message", [
    ([0.5, "a"], "weight holds 'a' \\(str\\)"),
    ([], "weight is an empty list"),
])  # fmt: skip
def test_bad_weight_lists_are_refused_naming_the_input(sd15, weight, message):
    from decoupled_ipadapter.nodes.apply import ApplyIPAdapter

    model, managed = sd15
    with pytest.raises(IPAdapterError, match=f"Apply IPAdapter: {message}"):
        run(ApplyIPAdapter, model=model, ipadapter=managed, embeds=image_embeds(20), weight=weight, start_at=0.0, end_at=1.0)


@pytest.mark.parametrize("inputs, named", [
    ({"unfold_batch": True}, "unfold_batch"),
    ({"weight": [1.0, 0.5]}, "a list of weights in weight"),
])  # fmt: skip
def test_flux_refuses_unfold_and_weight_lists(flux_nodes, flux_adapter, inputs, named):  # noqa: F811
    embeds = make_embeds(torch.randn(2, 768), torch.zeros(1, 768), clip_output="image_embeds")
    with pytest.raises(IPAdapterError, match=f"Apply IPAdapter: The Flux IP-Adapter does not take {named}"):
        run(
            flux_nodes["apply"], model=tiny_flux_model(CONFIG, seed=1), ipadapter=flux_adapter, embeds=embeds,
            **{"weight": 1.0, "start_at": 0.0, "end_at": 1.0, **inputs},
        )  # fmt: skip
