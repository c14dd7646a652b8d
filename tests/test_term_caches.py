"""The image-prompt term's caches across device moves: a device named without its index (`mps`, `cuda`) is the
device its tensors report with one (`mps:0`), so a model loaded there keeps the caches; another device drops them."""

import torch
from comfy_sampling_helpers import image_embeds, linear_adapter
from tiny_models import tiny_comfy_model

from decoupled_ipadapter.ipadapter_core.schedule import SigmaRange
from decoupled_ipadapter.ipadapter_core.term import ImagePromptTerm


def test_caches_stay_on_the_same_device_named_with_or_without_its_index(comfy_host):
    managed = linear_adapter(tiny_comfy_model("SD1.5", seed=0), seed=1)
    term = ImagePromptTerm(
        adapter=managed.adapter, weights_patcher=managed.weights_patcher, embeds=image_embeds(2), weight=1.0,
        sigmas=SigmaRange(start=float("inf"), end=0.0, always=True),
    )  # fmt: skip
    cpu = torch.device("cpu")
    tokens = term.tokens(cpu, torch.float32)
    term.keep_cached_only_on(torch.device("cpu", 0))  # the same device, named with an index; tensors report "cpu"
    assert term.tokens(cpu, torch.float32) is tokens, "the cache must survive a move to the device it is on"
    term.keep_cached_only_on(torch.device("meta"))
    assert term.tokens(cpu, torch.float32) is not tokens, "a move to another device drops the cache"
