"""Benchmark: what the image prompt costs per sampling step, loading and encoding times, peak memory.

Run with `make bench` (the host's Python, COMFYUI_DIR set). Prints a table and writes bench-results/bench.json.
On the CPU: a full-size SD1.5-shaped UNet (random weights) at a small latent. With a CUDA device: SD1.5 at 512×512
and SDXL at 1024×1024 in fp16. Every case is timed side by side with the plain model in the same run.
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


def start_host():
    sys.path.insert(0, os.environ["COMFYUI_DIR"])
    import pack_import  # noqa: F401  (the pack as `decoupled_ipadapter`)
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    args.disable_api_nodes = True
    import utils.extra_config  # noqa: F401
    import comfy.model_management  # noqa: F401


def unet(base: str, device, dtype):
    import comfy.model_patcher
    import comfy.supported_models
    from tiny_models import fill_random_

    config_class = comfy.supported_models.SD15 if base == "SD1.5" else comfy.supported_models.SDXL
    model_config = config_class(dict(SD15_UNET if base == "SD1.5" else SDXL_UNET))
    model_config.set_inference_dtype(dtype, None)
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


def conditioning(base: str, batch: int, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    width = 768 if base == "SD1.5" else 2048
    extra = {} if base == "SD1.5" else {"pooled_output": torch.randn(1, 1280, generator=generator), "width": size, "height": size}
    return [[torch.randn(1, 77, width, generator=generator), extra]]


def one_run_seconds_per_step(model, *, base: str, size: int, batch: int, steps: int) -> float:
    """Wall time of one KSampler step (euler, cfg 5: a conditional and an unconditional pass), one run."""
    import comfy.model_management
    import comfy.sample

    latent = torch.zeros(batch, 4, size // 8, size // 8)  # [B, 4, h, w]
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    comfy.model_management.soft_empty_cache()
    start = time.perf_counter()
    comfy.sample.sample(
        model, noise, steps, 5.0, "euler", "normal", conditioning(base, batch, size, 1),
        conditioning(base, batch, size, 2), latent, seed=0, disable_pbar=True,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def side_by_side(variants, *, repeats: int, **run) -> dict[str, float]:
    """Median s/step of each (label, model, recompute) variant, the runs interleaved so drift hits all alike.
    The first round warms up (loading, K'/V', kernels) and is not counted."""
    times = {label: [] for label, _, _ in variants}
    for round_index in range(repeats + 1):
        for label, model, recompute in variants:
            with recomputing_keys_values() if recompute else contextlib.nullcontext():
                seconds = one_run_seconds_per_step(model, **run)
            if round_index:
                times[label].append(seconds)
    return {label: statistics.median(values) for label, values in times.items()}


@contextlib.contextmanager
def recomputing_keys_values():
    """K'/V' recomputed on every layer call: what the once-per-run cache saves."""
    from decoupled_ipadapter.ipadapter_core.unet.patch import ImagePromptTerm

    original = ImagePromptTerm.keys_values

    def uncached(self, number, device, dtype):
        self.forget_keys_values()
        return original(self, number, device, dtype)

    ImagePromptTerm.keys_values = uncached
    try:
        yield
    finally:
        ImagePromptTerm.keys_values = original


# SD1.5's cross-attention layers in checkpoint order: (attention width, latent downscale of the block).
SD15_LAYERS = tuple(zip(
    (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280),
    (1, 1, 2, 2, 4, 4, 4, 4, 4, 2, 2, 2, 1, 1, 1, 8),
))  # fmt: skip


def attention_cost(device, dtype, size: int, directory: Path) -> list[dict]:
    """The image prompt's own cost in one SD1.5 UNet evaluation (cfg batch of 2), summed over the 16 layers: the
    patched attn2 call minus ComfyUI's plain attention, timed per layer with torch.utils.benchmark (low noise)."""
    from torch.utils import benchmark

    from decoupled_ipadapter.ipadapter_core.unet.layer_map import CrossAttentionLayer
    from decoupled_ipadapter.ipadapter_core.unet.patch import ImagePromptTerm, LayerPatch, host_attention
    from decoupled_ipadapter.ipadapter_core.schedule import SigmaRange

    rows = []
    for label, variant in (("base", "ip-adapter_sd15"), ("plus", "ip-adapter-plus_sd15"), ("full-face", "ip-adapter-full-face_sd15")):
        managed = official_adapter(variant, directory)[0]
        term = ImagePromptTerm(adapter=managed.adapter, weights_patcher=managed.weights_patcher,
                               embeds=embeds_for(managed.adapter.spec, 1), weight=0.7,
                               sigmas=SigmaRange(start=1e9, end=0.0, always=True))  # fmt: skip
        plain_total = patched_total = 0.0
        for index, (width, downscale) in enumerate(SD15_LAYERS):
            tokens = (size // 8 // downscale) ** 2
            q = torch.randn(2, tokens, width, device=device, dtype=dtype)  # [B, Nq, H·D]
            k = torch.randn(2, 77, width, device=device, dtype=dtype)  # [B, 77, H·D]
            options = {"n_heads": 8, "attn_precision": None, "cond_or_uncond": [1, 0], "sigmas": torch.ones(2, device=device)}
            layer = CrossAttentionLayer(number=2 * index + 1, key=("input", 0, 0), hidden_size=width, context_dim=768)
            patch = LayerPatch(layer=layer, terms=(term,))
            with torch.no_grad():
                patch(q, k, k, options)  # K'/V' computed once, as in a sampling run
                measure = {"plain": lambda: host_attention(q, k, k, options), "patched": lambda: patch(q, k, k, options)}
                seconds = {name: benchmark.Timer("f()", globals={"f": f}).blocked_autorange(min_run_time=0.3).median
                           for name, f in measure.items()}  # fmt: skip
            plain_total += seconds["plain"]
            patched_total += seconds["patched"]
        rows.append({"case": label, "tokens": managed.adapter.spec.num_tokens, "latent": f"{size // 8}x{size // 8}",
                     "plain_attn2_s": plain_total, "image_prompt_s": patched_total - plain_total})  # fmt: skip
    return rows


def step_cases(base: str, device, dtype, size: int, steps: int, repeats: int, directory: Path):
    from decoupled_ipadapter.ipadapter_core.unet.apply import apply_image_prompt

    model = unet(base, device, dtype)
    suffix = "sd15" if base == "SD1.5" else "sdxl_vit-h"
    adapters = {name: official_adapter(f"{prefix}_{suffix}", directory)[0] for name, prefix in
                (("base", "ip-adapter"), ("plus", "ip-adapter-plus"))}  # fmt: skip
    if base == "SD1.5":
        adapters["full-face"] = official_adapter("ip-adapter-full-face_sd15", directory)[0]

    def patched(names, images=1):
        result = model
        for name in names:
            managed = adapters[name]
            embeds = embeds_for(managed.adapter.spec, images)
            result = apply_image_prompt(result, managed.adapter, managed.weights_patcher, embeds, weight=0.7, start_at=0.0, end_at=1.0)
        return result

    cases = [
        ("base (4 tokens)", ["base"], 1),
        ("plus (16 tokens)", ["plus"], 1),
        *([("full-face (257 tokens)", ["full-face"], 1)] if "full-face" in adapters else []),
        ("4 adapters stacked", ["base"] * 4, 1),
        ("batch 4, base", ["base"], 4),
    ]
    rows = []
    for label, names, batch in cases:
        variants = [("plain", model, False), ("adapter", patched(names), False), ("recomputed", patched(names), True)]
        median = side_by_side(variants, repeats=repeats, base=base, size=size, batch=batch, steps=steps)
        rows.append({
            "base": base, "case": label, "batch": batch, "latent": f"{size // 8}x{size // 8}",
            "plain_s_per_step": median["plain"], "adapter_s_per_step": median["adapter"],
            "overhead": median["adapter"] / median["plain"] - 1,
            "recomputed_kv_s_per_step": median["recomputed"], "recomputed_overhead": median["recomputed"] / median["plain"] - 1,
        })  # fmt: skip
    return rows


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
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "bench-results" / "bench.json")
    parser.add_argument("--parts", default="loading,steps,attention,encode", help="comma-separated subset to run")
    options = parser.parse_args()
    start_host()
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    cuda = device.type == "cuda"
    parts = set(options.parts.split(","))
    results = {"machine": machine(), "steps": [], "loading": [], "attention": []}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        if "loading" in parts:
            results["loading"] = loading_times(directory, ["ip-adapter_sd15", "ip-adapter-plus_sdxl_vit-h"])
        if "steps" in parts and cuda:
            torch.cuda.reset_peak_memory_stats()
            results["steps"] += step_cases("SD1.5", device, torch.float16, 512, options.steps, options.repeats, directory)
            results["steps"] += step_cases("SDXL", device, torch.float16, 1024, options.steps, options.repeats, directory)
            results["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
        elif "steps" in parts:
            results["steps"] += step_cases("SD1.5", device, torch.float32, 256, options.steps, options.repeats, directory)
        if "attention" in parts:
            results["attention"] = attention_cost(device, torch.float16 if cuda else torch.float32, 512 if cuda else 256, directory)
    results["peak_ram_gib"] = peak_ram_gib()
    # Last: ComfyUI's CLIP vision keeps fp16 weights on a CPU and casts them per layer, which costs far more memory
    # than the sampling above; measured after it so both peaks are reported.
    if "encode" in parts:
        results["encode"] = encode_throughput(device)
        results["peak_ram_with_encode_gib"] = peak_ram_gib()
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nJSON: {options.output}")


def render(results) -> str:
    lines = [f"machine: {results['machine']}", "", "| model | case | batch | latent | plain s/step | with adapter | overhead | K'/V' per call | overhead |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in results["steps"]:
        lines.append(
            f"| {row['base']} | {row['case']} | {row['batch']} | {row['latent']} | {row['plain_s_per_step']:.3f} | "
            f"{row['adapter_s_per_step']:.3f} | {row['overhead']:+.1%} | {row['recomputed_kv_s_per_step']:.3f} | "
            f"{row['recomputed_overhead']:+.1%} |"
        )
    plain_step = {row["case"].split(" ")[0]: row["plain_s_per_step"] for row in results["steps"] if row["batch"] == 1}
    lines += ["", "image-prompt cost per UNet evaluation (16 layers, cfg batch 2), timed per layer:", "",
              "| case | tokens | latent | plain attn2 s | image prompt s | share of a plain step |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in results.get("attention", []):
        share = f"{row['image_prompt_s'] / plain_step[row['case']]:.2%}" if row["case"] in plain_step else "(steps not run)"
        lines.append(f"| {row['case']} | {row['tokens']} | {row['latent']} | {row['plain_attn2_s']:.4f} | {row['image_prompt_s']:.4f} | {share} |")
    lines += ["", "| file | MB | warm load s |", "|---|---|---|"]
    lines += [f"| {row['file']} | {row['megabytes']:.0f} | {row['warm_load_s']:.3f} |" for row in results["loading"]]
    encode = results.get("encode")
    if encode:
        lines += ["", f"encode: {encode['images']} images in {encode['seconds']:.2f} s = {encode['images_per_s']:.1f} images/s ({encode['encoder']})"]
    lines.append(
        f"peak RAM: {results['peak_ram_gib']:.2f} GiB before encoding"
        + (f", {results['peak_ram_with_encode_gib']:.2f} GiB after" if encode else "")
        + (f"; peak VRAM: {results['peak_vram_gib']:.2f} GiB" if "peak_vram_gib" in results else "")
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
