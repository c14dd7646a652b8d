"""The patched model moved between devices as ComfyUI's memory management moves it: loaded for a prompt, unloaded
(`/free`, another model needing the room), loaded again for the next prompt.

ComfyUI tells every patch object where the model goes (`ModelPatcher.model_patches_to`: a `torch.device` when it
loads or offloads the model, then its dtype). Our layer patches then keep the tokens, K'/V' and masks only on the
device the model is on, and pass the move on to another pack's patch they hold. This machine has only a CPU, where
ComfyUI loads and offloads to the same device: the real unload and reload runs through ComfyUI here, and a move to
another device is the `meta` device (nothing is computed there).
"""

import comfy_sampling_helpers as helpers
import pytest
import torch
from comfy_sampling_helpers import apply, image_embeds, linear_adapter
from tiny_models import nested, tiny_comfy_model
from tiny_sd3 import SIGLIP_WIDTH, instantx_adapter_state_dict, tiny_sd3_config, tiny_sd3_model

from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
from decoupled_ipadapter.ipadapter_core.memory import manage
from decoupled_ipadapter.ipadapter_core.patch_protocol import TermsPatch
from decoupled_ipadapter.ipadapter_core.term import DitBlock

pytestmark = pytest.mark.host

KEY = ("input", 1, 0)
ELSEWHERE = torch.device("meta")


class MovableForeignPatch:
    """Another pack's attn2 patch that holds tensors of its own: it records where it is moved."""

    def __init__(self):
        self.moves = []

    def __call__(self, q, k, v, extra_options):
        return helpers.call_patch(None, q, k, v, extra_options)

    def to(self, device_or_dtype):
        self.moves.append(device_or_dtype)
        return self


@pytest.fixture(scope="module")
def tiny(comfy_host):
    model = tiny_comfy_model("SD1.5", seed=31)
    return model, linear_adapter(model, seed=32)


def loaded_patchers():
    import comfy.model_management

    return [loaded.model for loaded in comfy.model_management.current_loaded_models]


def test_a_model_unloaded_and_loaded_again_between_two_prompts_gives_the_same_result(tiny, monkeypatch):
    import comfy.model_management

    model, managed = tiny
    patched = apply(model, managed, image_embeds(33), weight=0.8)
    moves = []
    move_patch = TermsPatch.to

    def recorded_move(patch, device_or_dtype):
        moves.append(device_or_dtype)
        return move_patch(patch, device_or_dtype)

    monkeypatch.setattr(TermsPatch, "to", recorded_move)
    first = helpers.sample(patched, cfg=3.0)
    assert any(patcher is managed.weights_patcher for patcher in loaded_patchers()), "the adapter loads with the UNet"
    assert patched.load_device in moves

    moves.clear()
    comfy.model_management.unload_all_models()  # what /free with unload_models does
    assert not any(patcher is managed.weights_patcher for patcher in loaded_patchers())
    assert moves and set(moves) == {patched.offload_device}, moves

    moves.clear()
    second = helpers.sample(patched, cfg=3.0)
    assert patched.load_device in moves
    assert torch.equal(second, first)


def test_a_move_drops_the_caches_on_the_device_the_model_left_and_keeps_those_where_it_is(tiny):
    model, managed = tiny
    patched = apply(model, managed, image_embeds(34), weight=0.8)
    patch = helpers.replace_patch(patched, KEY)
    (term,) = patch.terms
    q, k, v, options = helpers.layer_inputs(model, KEY)
    before = helpers.call_patch(patch, q, k, v, options)
    cached_keys, _ = term.keys_values(patch.layer, q.device, q.dtype)

    assert patch.to(torch.float16) is patch and patch.to(q.device) is patch
    assert term.keys_values(patch.layer, q.device, q.dtype)[0] is cached_keys, "a dtype or the same device keeps them"
    patch.to(ELSEWHERE)
    assert term.keys_values(patch.layer, q.device, q.dtype)[0] is not cached_keys, "the CPU copies outlived the move"
    patch.to(q.device)
    assert torch.equal(helpers.call_patch(patch, q, k, v, options), before)


def test_the_sd3_terms_per_step_caches_follow_the_model_too(comfy_host, tmp_path):
    """SD3.5's terms cache per step and device (their tokens depend on the timestep): the same rule."""
    from decoupled_ipadapter.nodes.apply import ApplyIPAdapter

    config = tiny_sd3_config()
    path = tmp_path / "sd35-ip-adapter.bin"
    weights = instantx_adapter_state_dict(hidden_size=config["depth"] * 64, joint_blocks=config["depth"], seed=3)
    torch.save(nested(weights), str(path))
    managed = manage(load_adapter(str(path)))
    siglip_states = torch.randn(1, 5, SIGLIP_WIDTH), torch.zeros(1, 5, SIGLIP_WIDTH)
    embeds = make_embeds(*siglip_states, clip_output="penultimate_hidden_states")
    (patched,) = ApplyIPAdapter.execute(
        model=tiny_sd3_model(config, seed=1), ipadapter=managed, embeds=embeds, weight=0.7, start_at=0.0, end_at=1.0
    ).result
    patch = patched.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    (term,) = patch.terms
    cpu, sigma = torch.device("cpu"), 1.0
    cached_keys, _ = term.keys_values(DitBlock(number=0), cpu, torch.float32, sigma=sigma)
    patch.to(torch.float16)
    patch.to(cpu)
    assert term.keys_values(DitBlock(number=0), cpu, torch.float32, sigma=sigma)[0] is cached_keys, "a dtype or the same device keeps them"
    patch.to(ELSEWHERE)
    assert term.keys_values(DitBlock(number=0), cpu, torch.float32, sigma=sigma)[0] is not cached_keys, "the CPU copies outlived the move"


def test_another_packs_patch_held_by_ours_moves_with_the_model(tiny):
    model, managed = tiny
    theirs = model.clone()
    theirs.set_model_attn2_replace(MovableForeignPatch(), *KEY)
    patch = helpers.replace_patch(apply(theirs, managed, image_embeds(35), weight=0.8), KEY)
    foreign = patch.base  # a copy of theirs: ComfyUI's clone deep-copies the patch objects it does not know
    assert isinstance(foreign, MovableForeignPatch)
    foreign.moves.clear()
    patch.to(ELSEWHERE)
    patch.to(torch.float16)
    assert foreign.moves == [ELSEWHERE, torch.float16]
