"""Benchmark: what the image prompt costs, side by side with the plain model in the same run; loading, encoding, RAM.

Run with `make bench` (the host's Python, COMFYUI_DIR set); `--parts` picks sections, `--quick` runs the stacking
section alone, 3 rounds. Prints each section's table when it is measured and keeps bench-results/bench.json up to
date. All models have random weights. On a 2-core CPU the sampling sections take minutes each, longer when other
jobs share the machine (the load average is printed at the start and the end).

- stacking: a full-size SD1.5 UNet, 128×128 pixels (16×16 latent), KSampler euler, "normal", 6 steps, cfg 5.
  Cases: plain, one adapter (ip-adapter_sd15's shapes), four Apply nodes stacked. `--repeats` rounds (default 7);
  in each round every case runs once, one after the other, so drift and other load on the machine hit all cases
  alike; a one-step run of each case first (loading, K'/V', kernels) is not counted. Whole-sample ratio: median
  wall time of the run, patched / plain. Per-step ratio: the sampler calls back after each step's model
  evaluation; a run's time per step is (last callback − first callback) / 5: the steps after the first, so the
  once-per-run costs (sampler setup, projecting the image tokens, K'/V' at the first step) are left out; its
  median over rounds, patched / plain.
- end_at: four stacked adapters (four times the signal of one, above the timing noise) with end_at = 0.3, in the
  same rounds: its added time over plain as a fraction of the full-range stack's added time, per sample and per
  step, next to the share of steps whose sigma lies in the range, and the image prompt's own time measured inside
  the patch (every `LayerPatch.image_prompt` call timed), end_at 0.3 against the full range: that figure is not
  lost in the run-to-run noise of whole samples.
- cache (only when asked for): one adapter with K'/V' recomputed on every layer call, what the once-per-run cache
  saves.
- style: SDXL's 70 cross-attention layers at their real widths and token counts (1024² pixels, 128² latent, cfg
  batch 2, 77 text tokens, ip-adapter_sdxl_vit-h's 4 image tokens). The real apply function patches a full-size SDXL
  UNet built on the meta device (no weights: the patches read only the adapter's); every patch it sets is timed
  against ComfyUI's plain attention with torch.utils.benchmark on real tensors; a layer without a patch costs 0.
  Summed over the 70 layers for weight_type "linear" and "style transfer".
- flux: the XLabs Flux adapter's per-step overhead, per step as above (3 steps), cfg 1 (one pass per step): on the tiny
  Flux of the tests (devkit/tiny_flux.py) and on a full-width Flux (FLUX.1's 24 heads of 128, width 3072) with one
  double and two single blocks, FLUX.1's 19 : 38 ratio of patched to unpatched blocks: a whole FLUX.1 (12B
  parameters, 48 GB in fp32) does not fit this machine. 128×128 pixels (64 image
  tokens) and 8 text tokens, FLUX.1's 8 : 1 ratio of image to text tokens at 1024² with 512 text tokens.
- instantx_flux: the InstantX FLUX.1-dev adapter's per-step overhead, per step as above (3 steps), cfg 1, 128 image
  tokens (the official count; a small projection, which runs once per run): on the tiny Flux of the tests and on a
  full-width Flux (24 heads of 128, width 3072) with 1 double + 2 single and 2 double + 4 single blocks (FLUX.1's
  19 : 38), every block patched as in FLUX.1. A line through the two full-width cases (per group of one double and
  two single blocks, and once per step, plain and patched) gives an estimate of FLUX.1's per-step ratio with all 19
  groups, said to be an estimate: FLUX.1 itself does not fit this machine.
- sd3: the InstantX SD3.5 adapter's per-step overhead, per step as above (3 steps), cfg 5 (a cond and an uncond
  pass per step), 729 SigLIP tokens (so400m at 384²): on the tiny SD3 of the tests (devkit/tiny_sd3.py, small
  resampler) and on a full-width SD3.5 Large (38 heads of 64, width 2432) with 2 and with 4 of its 38 joint blocks
  and the official resampler (1280 wide, 64 tokens); every joint block is patched, as in SD3.5 Large, and the
  resampler runs once per step (it reads the timestep), so with few blocks it weighs far more than in the real
  model. A whole SD3.5 Large (8B parameters) does not fit this machine in fp32: the line through the two full-width
  cases (per-block and once-per-step costs, plain and patched) gives its estimated per-step ratio at 38 blocks.
- loading: warm load time of official-shape adapter files; encode: CLIP ViT-H throughput; peak RAM.
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "devkit"))

import repo_paths  # noqa: E402,F401  (devkit/ and tools/ on sys.path)
from model_configs import SD15_UNET, SDXL_UNET  # noqa: E402

PARTS = ("stacking", "end_at", "style", "flux", "instantx_flux", "sd3", "loading", "encode", "cache")
DEFAULT_PARTS = PARTS[:-1]  # "cache" (K'/V' recomputed per call) on request
SD15_SIZE = 128  # pixels: a 16×16 latent
SD15_STEPS = 6
FLUX_STEPS = 3
SD3_STEPS = 3
SIGLIP_TOKENS = 729  # SigLIP so400m at 384²: 27² patches
SD35_LARGE_HEADS = 38  # SD3.5 Large: 38 heads of 64 (width 2432), 38 joint blocks
SD3_FULL_WIDTH_BLOCKS = (2, 4)  # two full-width cases: the line through them extends to 38 blocks
FLUX1_BLOCK_GROUPS = 19  # FLUX.1: 19 double and 38 single blocks, 19 groups of one double and two single blocks
INSTANTX_FLUX_GROUPS = (1, 2)  # full-width cases of 1 + 2 and 2 + 4 blocks: the line through them extends to 19
INSTANTX_FLUX_TOKENS = 128  # the official file's image-prompt tokens
SDXL_LATENT = 128  # 1024² pixels


def start_host():
    sys.path.insert(0, os.environ["COMFYUI_DIR"])
    import pack_import  # noqa: F401  (the pack as `decoupled_ipadapter`)
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    args.disable_api_nodes = True
    import utils.extra_config  # noqa: F401
    import comfy.model_management  # noqa: F401


def unet(base: str, device, dtype, *, weights: bool = True):
    """A full-size SD1.5 or SDXL ModelPatcher with random weights, or (weights=False) built on the meta device."""
    import comfy.model_patcher
    import comfy.supported_models
    from tiny_models import fill_random_

    config_class = comfy.supported_models.SD15 if base == "SD1.5" else comfy.supported_models.SDXL
    model_config = config_class(dict(SD15_UNET if base == "SD1.5" else SDXL_UNET))
    model_config.set_inference_dtype(dtype, None)
    if not weights:
        with torch.device("meta"):
            model = model_config.get_model({}, device=torch.device("meta"))
        return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    model = model_config.get_model({}, device=torch.device("cpu"))
    fill_random_(model.diffusion_model, seed=0)
    model.diffusion_model.to(dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def official_adapter(variant: str, directory: Path):
    from official_shapes import write_official_file

    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.memory import manage

    path = write_official_file(variant, directory, "safetensors")
    return manage(load_adapter(str(path))), path


def embeds_for(spec, images: int):
    from decoupled_ipadapter.ipadapter_core.embeds import make_embeds

    generator = torch.Generator().manual_seed(5)
    if spec.clip_output == "image_embeds":
        positive = torch.randn(images, spec.embedding_dim, generator=generator)
        return make_embeds(positive, torch.zeros(1, spec.embedding_dim), clip_output=spec.clip_output)
    positive = torch.randn(images, 257, spec.embedding_dim, generator=generator)
    return make_embeds(positive, torch.randn(1, 257, spec.embedding_dim, generator=generator), clip_output=spec.clip_output)


def sd15_conditioning(seed: int):
    return [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(seed)), {}]]


def sample_seconds(model, *, latent_shape, positive, negative, steps: int, cfg: float) -> tuple[float, float | None]:
    """One KSampler run (euler, "normal"): its wall time, and the mean time of its steps after the first, from the
    sampler's step callbacks (each comes after the step's model evaluation), or None for a one-step run."""
    import comfy.model_management
    import comfy.sample

    latent = torch.zeros(latent_shape)
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0))
    stamps = []

    def stamp(step, denoised, x, total_steps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    comfy.model_management.soft_empty_cache()
    start = time.perf_counter()
    comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent, seed=0, callback=stamp, disable_pbar=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, (stamps[-1] - stamps[0]) / (steps - 1) if steps > 1 else None


def interleaved_times(variants, *, repeats: int, run) -> dict:
    """{label: {"sample_s": [...], "step_s": [...]}}, one entry per round: every round runs each (label, model) once,
    one after the other, so drift and other load hit all alike. A one-step run of each first (loading, K'/V',
    kernels) is not counted."""
    times = {label: {"sample_s": [], "step_s": [], "image_prompt_s": []} for label, _ in variants}
    for round_index in range(repeats + 1):
        for label, model in variants:
            with recomputing_keys_values() if label.endswith("K'/V' per call") else contextlib.nullcontext():
                with timing_image_prompt() as image_prompt_s:
                    sample_s, step_s = run(model, 1 if round_index == 0 else None)
            if round_index:
                times[label]["sample_s"].append(sample_s)
                times[label]["step_s"].append(step_s)
                times[label]["image_prompt_s"].append(sum(image_prompt_s))
        print(f"  round {round_index}/{repeats} done", file=sys.stderr, flush=True)
    return times


@contextlib.contextmanager
def timing_image_prompt():
    """The wall time of every `LayerPatch.image_prompt` call (the image attention of all terms, K'/V' where they are
    computed, masks): the patch's own work, timed inside the run, so it is not lost in the whole run's noise."""
    from decoupled_ipadapter.ipadapter_core.unet.patch import LayerPatch

    original = LayerPatch.image_prompt
    durations = []

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        out = original(self, *args, **kwargs)
        if out.is_cuda:
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - start)
        return out

    LayerPatch.image_prompt = timed
    try:
        yield durations
    finally:
        LayerPatch.image_prompt = original


@contextlib.contextmanager
def recomputing_keys_values():
    """K'/V' recomputed on every layer call (the cache emptied before each look-up): what the once-per-run cache saves."""
    from decoupled_ipadapter.ipadapter_core.term import ImagePromptTerm

    original = ImagePromptTerm.keys_values

    def uncached(self, *args, **kwargs):
        self._keys_values.clear()
        return original(self, *args, **kwargs)

    ImagePromptTerm.keys_values = uncached
    try:
        yield
    finally:
        ImagePromptTerm.keys_values = original


def acting_fraction(model, steps: int) -> float:
    """The share of the sampler's steps whose sigma lies in the range of the first patch's last term."""
    import comfy.samplers

    patch = next(iter(model.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)[:-1]
    return sum(patch.terms[-1].sigmas.contains(float(sigma)) for sigma in sigmas) / steps


def sd15_cases(parts, device, repeats: int, directory: Path) -> dict:
    """The stacking, end_at and cache sections, in the same interleaved rounds."""
    from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt

    model = unet("SD1.5", device, torch.float32)
    managed = official_adapter("ip-adapter_sd15", directory)[0]
    embeds = embeds_for(managed.adapter.spec, 1)

    def stacked(count: int, end_at: float = 1.0):
        result = model
        for _ in range(count):
            result = apply_image_prompt(result, managed.adapter, managed.weights_patcher, embeds, weight=0.7, start_at=0.0, end_at=end_at)
        return result

    wanted = {"stacking": ("one adapter", "four stacked"), "end_at": ("four stacked", "four stacked, end_at 0.3"),
              "cache": ("one adapter", "one adapter, K'/V' per call")}  # fmt: skip
    build = {"one adapter": lambda: stacked(1), "four stacked": lambda: stacked(4),
             "four stacked, end_at 0.3": lambda: stacked(4, end_at=0.3), "one adapter, K'/V' per call": lambda: stacked(1)}  # fmt: skip
    labels = [label for label in build if any(label in wanted[part] for part in parts if part in wanted)]
    variants = [("plain", model), *((label, build[label]()) for label in labels)]
    latent_shape = (1, 4, SD15_SIZE // 8, SD15_SIZE // 8)  # [B, 4, h, w]

    def run(patched, steps):
        return sample_seconds(patched, latent_shape=latent_shape, positive=sd15_conditioning(1),
                              negative=sd15_conditioning(2), steps=steps or SD15_STEPS, cfg=5.0)  # fmt: skip

    times = interleaved_times(variants, repeats=repeats, run=run)
    whole = {label: statistics.median(runs["sample_s"]) for label, runs in times.items()}
    step = {label: statistics.median(runs["step_s"]) for label, runs in times.items()}
    inside = {label: statistics.median(runs["image_prompt_s"]) for label, runs in times.items()}
    result = {"setup": f"SD1.5 full size, {SD15_SIZE}x{SD15_SIZE} px, euler {SD15_STEPS} steps, cfg 5, "
                       f"{repeats} interleaved rounds, medians", "times": times}  # fmt: skip
    result["cases"] = [
        {"case": label, "sample_s": whole[label], "whole_sample_ratio": whole[label] / whole["plain"],
         "step_s": step[label], "per_step_ratio": step[label] / step["plain"], "image_prompt_s": inside[label],
         "image_prompt_share": inside[label] / whole["plain"]}
        for label in whole
    ]  # fmt: skip
    if "end_at" in parts:
        added_full = whole["four stacked"] - whole["plain"]
        added_end = whole["four stacked, end_at 0.3"] - whole["plain"]
        step_full = step["four stacked"] - step["plain"]
        step_end = step["four stacked, end_at 0.3"] - step["plain"]
        result["end_at"] = {
            "case": "four stacked", "added_full_range_s": added_full, "added_end_at_0.3_s": added_end,
            "fraction": added_end / added_full if added_full > 0 else None,
            "per_step_fraction": step_end / step_full if step_full > 0 else None,
            "image_prompt_fraction": inside["four stacked, end_at 0.3"] / inside["four stacked"],
            "steps_in_range": acting_fraction(dict(variants)["four stacked, end_at 0.3"], SD15_STEPS),
        }  # fmt: skip
    return result


def timed_median(function) -> float:
    from torch.utils import benchmark

    return benchmark.Timer("f()", globals={"f": function}).blocked_autorange(min_run_time=0.2).median


def sdxl_layer_tokens(diffusion_model) -> dict:
    """Layer key → query tokens at a SDXL_LATENT² latent: input/output levels 1 and 2 (the levels with
    transformers) sit at 1/2 and 1/4 of the latent side, the middle block at 1/4."""
    from decoupled_ipadapter.ipadapter_core.unet.layer_map import cross_attention_layers

    downscale_of_width = {640: 2, 1280: 4}  # SDXL: level 1 has width 640, level 2 and the middle 1280
    return {layer.key: (SDXL_LATENT // downscale_of_width[layer.hidden_size]) ** 2 for layer in cross_attention_layers(diffusion_model)}


def style_costs(device, directory: Path) -> dict:
    """The image prompt's cost in one SDXL UNet evaluation (cfg batch 2), summed over the 70 layers: every patch the
    real apply function set, timed against ComfyUI's plain attention; layers without a patch add 0."""
    from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
    from decoupled_ipadapter.ipadapter_core.unet.patch import host_attention

    model = unet("SDXL", device, torch.float32, weights=False)
    managed = official_adapter("ip-adapter_sdxl_vit-h", directory)[0]
    embeds = embeds_for(managed.adapter.spec, 1)
    tokens = sdxl_layer_tokens(model.get_model_object("diffusion_model"))
    generator = torch.Generator().manual_seed(0)
    plain_seconds = {}
    result = {"setup": f"SDXL's 70 layers, {SDXL_LATENT}x{SDXL_LATENT} latent, cfg batch 2, 77 text tokens", "layers": len(tokens)}
    for weight_type in ("linear", "style transfer"):
        patched = apply_image_prompt(model, managed.adapter, managed.weights_patcher, embeds, weight=0.7, start_at=0.0,
                                     end_at=1.0, weight_type=weight_type)  # fmt: skip
        attn2 = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
        patches = {key: attn2[key] for key in tokens if key in attn2}
        added = 0.0
        for key, patch in patches.items():
            width = patch.layer.hidden_size
            q = torch.randn(2, tokens[key], width, generator=generator)  # [B, Nq, H·D]
            k = torch.randn(2, 77, width, generator=generator)  # [B, 77, H·D]
            options = {"n_heads": width // 64, "attn_precision": None, "cond_or_uncond": [1, 0], "sigmas": torch.ones(2)}
            with torch.no_grad():
                patch(q, k, k, options)  # K'/V' computed once, as in a sampling run
                if key not in plain_seconds:
                    plain_seconds[key] = timed_median(lambda: host_attention(q, k, k, options))
                added += timed_median(lambda: patch(q, k, k, options)) - plain_seconds[key]
        result[weight_type] = {"patched_layers": len(patches), "added_s": added,
                               "lowest_resolution_only": all(tokens[key] == min(tokens.values()) for key in patches)}  # fmt: skip
    result["plain_attn2_s"] = sum(plain_seconds.values())
    result["style_over_linear"] = result["style transfer"]["added_s"] / result["linear"]["added_s"]
    return result


def per_step_row(label: str, model, patched, *, repeats: int, positive, negative, steps: int, cfg: float) -> dict:
    """The plain and the patched DiT (16 latent channels, SD15_SIZE pixels) in interleaved rounds: their median time
    per step and its ratio."""

    def run(dit, run_steps):
        return sample_seconds(dit, latent_shape=(1, 16, SD15_SIZE // 8, SD15_SIZE // 8), positive=positive,
                              negative=negative, steps=run_steps or steps, cfg=cfg)  # fmt: skip

    times = interleaved_times([("plain", model), ("adapter", patched)], repeats=repeats, run=run)
    step = {name: statistics.median(runs["step_s"]) for name, runs in times.items()}
    parameters = sum(parameter.numel() for parameter in model.model.diffusion_model.parameters())
    return {"case": label, "parameters_m": parameters / 1e6, "plain_s_per_step": step["plain"],
            "adapter_s_per_step": step["adapter"], "per_step_ratio": step["adapter"] / step["plain"], "times": times}  # fmt: skip


def flux_case(label: str, config: dict, repeats: int, directory: Path) -> dict:
    """Per-step overhead of one XLabs adapter on a Flux built from `config` (cfg 1, one pass per step)."""
    from safetensors.torch import save_file
    from tiny_flux import FLUX_POOLED_WIDTH, FLUX_TEXT_WIDTH, tiny_flux_model, xlabs_adapter_state_dict

    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
    from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
    from decoupled_ipadapter.ipadapter_core.memory import manage

    model = tiny_flux_model(config, seed=0)
    path = directory / "flux-ip-adapter.safetensors"
    save_file(xlabs_adapter_state_dict(hidden_size=config["hidden_size"], double_blocks=config["depth"], seed=3), str(path))
    managed = manage(load_adapter(str(path)))
    embeds = make_embeds(torch.randn(1, FLUX_POOLED_WIDTH, generator=torch.Generator().manual_seed(5)),
                         torch.zeros(1, FLUX_POOLED_WIDTH), clip_output="image_embeds")  # fmt: skip
    patched = apply_image_prompt(model, managed.adapter, managed.weights_patcher, embeds, weight=0.7, start_at=0.0, end_at=1.0)
    generator = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 8, FLUX_TEXT_WIDTH, generator=generator),
                 {"pooled_output": torch.randn(1, FLUX_POOLED_WIDTH, generator=generator), "guidance": 3.5}]]  # fmt: skip

    path.unlink()
    return per_step_row(label, model, patched, repeats=repeats, positive=positive, negative=positive, steps=FLUX_STEPS,
                        cfg=1.0)  # fmt: skip


def flux_costs(repeats: int, directory: Path) -> list[dict]:
    from tiny_flux import tiny_flux_config

    setup = f"{SD15_SIZE}x{SD15_SIZE} px (64 image tokens), 8 text tokens, cfg 1, euler {FLUX_STEPS} steps, {repeats} rounds"
    rows = [flux_case("tiny Flux (2 double, 2 single, 2 heads)", tiny_flux_config(), repeats, directory)]
    full_width = tiny_flux_config(double_blocks=1, single_blocks=2, heads=24)
    rows.append(flux_case("full-width Flux (1 double, 2 single, 24 heads)", full_width, repeats, directory))
    return [{**row, "setup": setup} for row in rows]


def instantx_flux_case(label: str, config: dict, repeats: int, directory: Path) -> dict:
    """Per-step overhead of one InstantX adapter (128 tokens) on a Flux built from `config`, every double and single
    block patched (cfg 1, one pass per step)."""
    from tiny_flux import FLUX_POOLED_WIDTH, FLUX_TEXT_WIDTH, SIGLIP_WIDTH, instantx_adapter_parts, tiny_flux_model

    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
    from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
    from decoupled_ipadapter.ipadapter_core.encoders import SIGLIP_POOLED
    from decoupled_ipadapter.ipadapter_core.memory import manage

    model = tiny_flux_model(config, seed=0)
    blocks = config["depth"] + config["depth_single_blocks"]
    path = directory / "flux1-dev-ip-adapter-instantx.bin"
    torch.save(instantx_adapter_parts(hidden_size=config["hidden_size"], layers=blocks, seed=3,
                                      num_tokens=INSTANTX_FLUX_TOKENS), str(path))  # fmt: skip
    managed = manage(load_adapter(str(path)))
    generator = torch.Generator().manual_seed(5)
    pooled = torch.randn(1, SIGLIP_WIDTH, generator=generator)
    embeds = make_embeds(pooled, pooled, clip_output=SIGLIP_POOLED)
    patched = apply_image_prompt(model, managed.adapter, managed.weights_patcher, embeds, weight=0.6, start_at=0.0, end_at=1.0)
    positive = [[torch.randn(1, 8, FLUX_TEXT_WIDTH, generator=generator),
                 {"pooled_output": torch.randn(1, FLUX_POOLED_WIDTH, generator=generator), "guidance": 3.5}]]  # fmt: skip
    path.unlink()
    row = per_step_row(label, model, patched, repeats=repeats, positive=positive, negative=positive, steps=FLUX_STEPS,
                       cfg=1.0)  # fmt: skip
    return {**row, "blocks": config["depth"]}  # groups of one double and two single blocks


def instantx_flux_costs(repeats: int, directory: Path) -> dict:
    from tiny_flux import tiny_flux_config

    setup = (f"{SD15_SIZE}x{SD15_SIZE} px (64 image tokens), 8 text tokens, {INSTANTX_FLUX_TOKENS} image-prompt tokens, "
             f"cfg 1, euler {FLUX_STEPS} steps, {repeats} rounds")  # fmt: skip
    rows = [instantx_flux_case("tiny Flux (2 double, 2 single, 2 heads)", tiny_flux_config(), repeats, directory)]
    for groups in INSTANTX_FLUX_GROUPS:
        full_width = tiny_flux_config(double_blocks=groups, single_blocks=2 * groups, heads=24)
        rows.append(instantx_flux_case(f"full-width Flux ({groups} double, {2 * groups} single, 24 heads)", full_width,
                                       repeats, directory))  # fmt: skip
    return {"rows": [{**row, "setup": setup} for row in rows],
            "flux1_estimate": whole_model_estimate(rows[1:], blocks=FLUX1_BLOCK_GROUPS)}  # fmt: skip


def sd3_case(label: str, config: dict, resampler: dict, repeats: int, directory: Path) -> dict:
    """Per-step overhead of one InstantX adapter on an SD3 built from `config` (cfg 5: a cond and an uncond pass per
    step; the resampler runs at every step, since it reads the timestep)."""
    from tiny_models import nested
    from tiny_sd3 import SD3_HEAD_DIM, SD3_POOLED_WIDTH, SD3_TEXT_WIDTH, SIGLIP_WIDTH, instantx_adapter_state_dict, tiny_sd3_model

    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.encoders import PENULTIMATE
    from decoupled_ipadapter.ipadapter_core.apply import apply_image_prompt
    from decoupled_ipadapter.ipadapter_core.embeds import make_embeds
    from decoupled_ipadapter.ipadapter_core.memory import manage

    model = tiny_sd3_model(config, seed=0)
    blocks = len(model.model.diffusion_model.joint_blocks)
    path = directory / "ip-adapter.bin"
    weights = instantx_adapter_state_dict(hidden_size=config["depth"] * SD3_HEAD_DIM, joint_blocks=blocks, seed=3,
                                          resampler=resampler)  # fmt: skip
    torch.save(nested(weights), str(path))
    managed = manage(load_adapter(str(path)))
    generator = torch.Generator().manual_seed(5)
    image_tokens = torch.randn(1, SIGLIP_TOKENS, SIGLIP_WIDTH, generator=generator)  # [1, 729, 1152]
    embeds = make_embeds(image_tokens, torch.zeros_like(image_tokens), clip_output=PENULTIMATE)
    patched = apply_image_prompt(model, managed.adapter, managed.weights_patcher, embeds, weight=0.5, start_at=0.0,
                                     end_at=1.0)  # fmt: skip
    positive = [[torch.randn(1, 77, SD3_TEXT_WIDTH, generator=generator),
                 {"pooled_output": torch.randn(1, SD3_POOLED_WIDTH, generator=generator)}]]  # fmt: skip
    negative = [[torch.randn(1, 77, SD3_TEXT_WIDTH, generator=generator),
                 {"pooled_output": torch.randn(1, SD3_POOLED_WIDTH, generator=generator)}]]  # fmt: skip

    path.unlink()
    row = per_step_row(label, model, patched, repeats=repeats, positive=positive, negative=negative, steps=SD3_STEPS,
                       cfg=5.0)  # fmt: skip
    return {**row, "blocks": blocks}


def sd3_costs(repeats: int, directory: Path) -> list[dict]:
    from tiny_sd3 import INSTANTX_RESAMPLER, TINY_RESAMPLER, tiny_sd3_config

    setup = (f"{SD15_SIZE}x{SD15_SIZE} px (64 image tokens), 77 text tokens, {SIGLIP_TOKENS} SigLIP tokens, cfg 5, "
             f"euler {SD3_STEPS} steps, {repeats} rounds")  # fmt: skip
    rows = [sd3_case("tiny SD3 (3 joint blocks, 3 heads; small resampler)", tiny_sd3_config(), TINY_RESAMPLER, repeats, directory)]
    for blocks in SD3_FULL_WIDTH_BLOCKS:
        full_width = {**tiny_sd3_config(blocks=SD35_LARGE_HEADS), "num_blocks": blocks}
        rows.append(sd3_case(f"full-width SD3.5 Large ({blocks} joint blocks, 38 heads; official resampler)", full_width,
                             INSTANTX_RESAMPLER, repeats, directory))  # fmt: skip
    return {"rows": [{**row, "setup": setup} for row in rows],
            "sd35_large_estimate": whole_model_estimate(rows[1:], blocks=SD35_LARGE_HEADS)}  # fmt: skip


def whole_model_estimate(rows: list[dict], *, blocks: int) -> dict:
    """A whole model's per-step ratio with all its `blocks` (SD3.5 Large: 38 joint blocks; FLUX.1: 19 groups of one
    double and two single blocks), from two full-width cases: a straight line through each case's s/step against its
    block count, plain and patched, gives the per-block cost and the once-per-step rest (embedders and final layer;
    with the SD3.5 adapter also the resampler, which runs once per step), extended to `blocks`."""
    (few, many) = rows
    counts = [few["blocks"], many["blocks"]]

    def line(key):
        per_block = (many[key] - few[key]) / (counts[1] - counts[0])
        return per_block, few[key] - counts[0] * per_block

    plain_per_block, plain_rest = line("plain_s_per_step")
    adapter_per_block, adapter_rest = line("adapter_s_per_step")
    plain = plain_rest + blocks * plain_per_block
    adapter = adapter_rest + blocks * adapter_per_block
    return {"blocks": blocks, "added_per_block_s": adapter_per_block - plain_per_block,
            "added_once_per_step_s": adapter_rest - plain_rest, "plain_s_per_step": plain, "per_step_ratio": adapter / plain}  # fmt: skip


def loading_times(directory: Path, variants):
    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from official_shapes import write_official_file

    rows = []
    for variant in variants:
        path = write_official_file(variant, directory, "safetensors")
        load_adapter(str(path))  # cold read: fills the OS file cache
        times = []
        for _ in range(5):
            start = time.perf_counter()
            load_adapter(str(path))
            times.append(time.perf_counter() - start)
        rows.append({"file": path.name, "megabytes": path.stat().st_size / 2**20, "warm_load_s": min(times)})
        path.unlink()
    return rows


def encode_throughput(device) -> dict:
    import comfy.clip_vision

    from decoupled_ipadapter.ipadapter_core.encoding import encode_images

    config = Path(comfy.clip_vision.__file__).with_name("clip_vision_config_h.json")
    clip_vision = comfy.clip_vision.ClipVisionModel(str(config))
    images = torch.rand(16, 256, 256, 3, generator=torch.Generator().manual_seed(0))  # [16, H, W, 3]
    encode_images(clip_vision, images[:2], clip_output="penultimate_hidden_states", after_batch=lambda count: None)
    start = time.perf_counter()
    encode_images(clip_vision, images, clip_output="penultimate_hidden_states", after_batch=lambda count: None)
    seconds = time.perf_counter() - start
    return {"encoder": "ViT-H/14 (random weights)", "images": 16, "seconds": seconds, "images_per_s": 16 / seconds}


def peak_ram_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    load = " load average %.2f %.2f %.2f," % os.getloadavg()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads,{load} torch {torch.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds of the sampling sections")
    parser.add_argument("--output", type=Path, default=REPO / "bench-results" / "bench.json")
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="the stacking section alone, 3 rounds")
    options = parser.parse_args()
    parts = {"stacking"} if options.quick else set(options.parts.split(","))
    repeats = 3 if options.quick else options.repeats
    if parts - set(PARTS):
        parser.error(f"unknown parts {sorted(parts - set(PARTS))}; use {','.join(PARTS)}")
    start_host()
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    results = {"machine": machine()}
    options.output.parent.mkdir(parents=True, exist_ok=True)
    print(f"machine: {results['machine']}", flush=True)

    def finished(key: str, value, render_section) -> None:
        """Print a section's table as soon as it is measured and keep the JSON up to date (a long run that is
        stopped keeps what it measured)."""
        results[key] = value
        print("\n".join(render_section(value)), flush=True)
        options.output.write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        # the short sections first, the long SD1.5 sampling rounds after them
        if "loading" in parts:
            finished("loading", loading_times(directory, ["ip-adapter_sd15", "ip-adapter-plus_sdxl_vit-h"]), render_loading)
        if "style" in parts:
            finished("style", style_costs(device, directory), render_style)
        if "flux" in parts:
            finished("flux", flux_costs(repeats, directory), render_dit("flux"))
        if "instantx_flux" in parts:
            finished("instantx_flux", instantx_flux_costs(repeats, directory), render_instantx_flux)
        if "sd3" in parts:
            finished("sd3", sd3_costs(repeats, directory), render_sd3)
        if parts & {"stacking", "end_at", "cache"}:
            finished("sd15", sd15_cases(parts, device, repeats, directory), render_sd15)
    results["peak_ram_gib"] = peak_ram_gib()
    # Last: ComfyUI's CLIP vision keeps fp16 weights on a CPU and casts them per layer, which costs far more memory
    # than the sampling above; measured after it so both peaks are reported.
    if "encode" in parts:
        finished("encode", encode_throughput(device), render_encode)
        results["peak_ram_with_encode_gib"] = peak_ram_gib()
    results["machine_after"] = machine()
    options.output.write_text(json.dumps(results, indent=2))
    print(
        f"\npeak RAM: {results['peak_ram_gib']:.2f} GiB before encoding"
        + (f", {results['peak_ram_with_encode_gib']:.2f} GiB after" if "encode" in results else "")
    )
    print(f"machine at the end: {results['machine_after']}")
    print(f"JSON: {options.output}")


def render_sd15(sd15) -> list[str]:
    lines = ["", f"SD1.5: {sd15['setup']}", "",
             "| case | sample s | whole-sample ratio (patched/plain) | s/step | per-step ratio | image prompt s (inside the patch) | its share of a plain sample |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in sd15["cases"]:
        lines.append(f"| {row['case']} | {row['sample_s']:.3f} | {row['whole_sample_ratio']:.4f} | {row['step_s']:.3f} | {row['per_step_ratio']:.4f} | "
                     f"{row['image_prompt_s']:.3f} | {row['image_prompt_share']:.2%} |")  # fmt: skip
    if "end_at" in sd15:
        end = sd15["end_at"]

        def share(value):
            return f"{value:.0%}" if value is not None else "n/a (no added time measured)"

        lines += ["", f"end_at 0.3 ({end['case']}): added {end['added_end_at_0.3_s']:+.3f} s per sample vs {end['added_full_range_s']:+.3f} s "
                  f"over the full range = {share(end['fraction'])}; per step: {share(end['per_step_fraction'])}; "
                  f"steps in range: {end['steps_in_range']:.0%}; the image prompt's own time inside the patch: "
                  f"{end['image_prompt_fraction']:.0%} of the full range's"]  # fmt: skip
    return lines


def render_style(style) -> list[str]:
    lines = ["", f"style transfer: {style['setup']}; plain attn2 total {style['plain_attn2_s']:.4f} s", "",
             "| weight_type | patched layers | image prompt s per UNet evaluation |", "|---|---|---|"]  # fmt: skip
    for weight_type in ("linear", "style transfer"):
        row = style[weight_type]
        note = " (all at the lowest resolution)" if row["lowest_resolution_only"] and weight_type != "linear" else ""
        lines.append(f"| {weight_type} | {row['patched_layers']} of {style['layers']}{note} | {row['added_s']:.4f} |")
    lines.append(f"style transfer / linear: {style['style_over_linear']:.3f}")
    return lines


def render_dit(family: str):
    """The renderer of a DiT family's section (flux, sd3): one row per model."""

    def render(rows) -> list[str]:
        lines = ["", f"{family}: {rows[0]['setup']}", "",
                 "| model | parameters | plain s/step | with adapter | per-step ratio |", "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {row['case']} | {row['parameters_m']:.0f} M | {row['plain_s_per_step']:.4f} | "
                  f"{row['adapter_s_per_step']:.4f} | {row['per_step_ratio']:.3f} |" for row in rows]  # fmt: skip
        return lines

    return render


def render_with_estimate(family: str, estimate_key: str, *, model: str, per: str, once: str):
    """The renderer of a DiT section with full-width cases and the whole model's estimate from them."""

    def render(section) -> list[str]:
        estimate = section[estimate_key]
        return render_dit(family)(section["rows"]) + [
            f"{model}, an estimate (a line through the two full-width cases): {estimate['added_per_block_s']:+.4f} s "
            f"per {per}, {estimate['added_once_per_step_s']:+.4f} s once per step{once}, per-step ratio "
            f"{estimate['per_step_ratio']:.3f} (plain {estimate['plain_s_per_step']:.2f} s/step)"
        ]

    return render


render_sd3 = render_with_estimate("sd3", "sd35_large_estimate", model="SD3.5 Large with all 38 joint blocks",
                                  per="patched block", once=" (the resampler)")  # fmt: skip
render_instantx_flux = render_with_estimate("instantx_flux", "flux1_estimate", model="FLUX.1 with all 19 double and 38 single blocks",
                                            per="group of one double and two single blocks", once="")  # fmt: skip


def render_loading(rows) -> list[str]:
    return ["", "| file | MB | warm load s |", "|---|---|---|",
            *(f"| {row['file']} | {row['megabytes']:.0f} | {row['warm_load_s']:.3f} |" for row in rows)]  # fmt: skip


def render_encode(encode) -> list[str]:
    return ["", f"encode: {encode['images']} images in {encode['seconds']:.2f} s = {encode['images_per_s']:.1f} images/s ({encode['encoder']})"]


if __name__ == "__main__":
    main()
