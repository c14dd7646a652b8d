"""Stand-in model files: the official key names and shapes, random values, built from ComfyUI's own model classes.

They let the example workflow run through ComfyUI's stock loaders (CheckpointLoaderSimple, CLIPVisionLoader,
ControlNetLoader) and the pack's Load IPAdapter on a machine without the real downloads. Pictures made with them
are noise: they check the pipeline, not the quality.

    python scripts/standins.py [--dir DIR]

DIR defaults to $DECOUPLED_IPADAPTER_STANDINS, else ${XDG_CACHE_HOME:-~/.cache}/decoupled-ipadapter/standins,
and gets ComfyUI's models layout (checkpoints/, clip_vision/, ipadapter/, controlnet/). Needs the ComfyUI host:
COMFYUI_DIR names its folder (default: the repo's .host/ComfyUI), and this script must run with the host's Python.
Every file is written under a temporary name, renamed, and recorded in a stamp file; a second run finds them and
does nothing. About 4 GB of fp16 files, 40-90 s on two CPU cores.
"""

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Raise when what the files hold changes: files recorded under another version are made again.
FORMAT_VERSION = 1
STAMP = "standins.json"
METADATA = {"decoupled_ipadapter": "stand-in with random weights (scripts/standins.py); not a trained model"}

CHECKPOINT = "checkpoints/v1-5-pruned-emaonly.safetensors"
CLIP_VISION = "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
IPADAPTER = "ipadapter/ip-adapter_sd15.safetensors"
CONTROLNET = "controlnet/control_v11p_sd15_canny.safetensors"
T2I_ADAPTER = "controlnet/t2iadapter_canny_sd15v2.safetensors"
FILES = (CHECKPOINT, CLIP_VISION, IPADAPTER, CONTROLNET, T2I_ADAPTER)

# The SD1.5 UNet as ComfyUI detects it in v1-5-pruned-emaonly (comfy/model_detection.py, "SD15").
SD15_UNET = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=768, num_heads=8,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    use_temporal_attention=False, use_temporal_resblock=False,
)  # fmt: skip
# The SD1.x VAE (comfy/sd.py's default ddconfig).
SD_VAE = dict(
    double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
    num_res_blocks=2, attn_resolutions=[], dropout=0.0,
)  # fmt: skip


def default_dir() -> Path:
    if os.environ.get("DECOUPLED_IPADAPTER_STANDINS"):
        return Path(os.environ["DECOUPLED_IPADAPTER_STANDINS"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "decoupled-ipadapter" / "standins"


def default_comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR") or REPO / ".host" / "ComfyUI")


def _read_stamp(directory: Path) -> dict:
    try:
        stamp = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stamp, dict) or stamp.get("version") != FORMAT_VERSION:
        return {}
    return stamp.get("files", {})


def _write_stamp(directory: Path, files: dict) -> None:
    partial = directory / f"{STAMP}.partial-{os.getpid()}"
    partial.write_text(json.dumps({"version": FORMAT_VERSION, "files": files}, indent=1, sort_keys=True))
    os.replace(partial, directory / STAMP)


def _is_recorded(directory: Path, name: str, files: dict) -> bool:
    path = directory / name
    return name in files and path.is_file() and path.stat().st_size == files[name]


def is_complete(directory: Path) -> bool:
    """True when every stand-in file is there, recorded in the stamp with its size (cheap: no imports)."""
    files = _read_stamp(directory)
    return all(_is_recorded(directory, name, files) for name in FILES)


def ensure(directory: Path | None = None, *, python: str = sys.executable, comfyui_dir: Path | None = None) -> Path:
    """The stand-in folder, generated first if incomplete: in a child process (it needs several GB of memory for a
    while) that prints its progress to this process's output."""
    directory = Path(directory or default_dir())
    if not is_complete(directory):
        environment = dict(os.environ, COMFYUI_DIR=str(comfyui_dir or default_comfyui_dir()))
        command = [python, str(Path(__file__).resolve()), "--dir", str(directory)]
        code = subprocess.run(command, env=environment).returncode
        if code != 0 or not is_complete(directory):
            raise RuntimeError(f"generating stand-in models in {directory} failed (exit code {code}; output above)")
    return directory


@contextlib.contextmanager
def _locked(directory: Path):
    """One generator at a time per folder (a test run and a demo may start together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _import_comfy(comfyui_dir: Path):
    if not (comfyui_dir / "comfy" / "model_management.py").is_file():
        raise SystemExit(f"standins: {comfyui_dir} is not a ComfyUI folder; set COMFYUI_DIR")
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported, or it looks for CUDA


def _tiny_models():
    """tests/tiny_models.py (the random initialisation shared with the tests), with tests/ put on sys.path."""
    if str(REPO / "tests") not in sys.path:
        sys.path.append(str(REPO / "tests"))
    import tiny_models

    return tiny_models


def _randomised(module, *, seed: int):
    """Fan-in-scaled weights keep activations finite through the random nets (ComfyUI's classes skip init)."""
    return _tiny_models().fill_random_(module, seed=seed)


def _half(state_dict: dict, prefix: str = "") -> dict:
    import torch

    return {prefix + key: value.detach().to(torch.float16).contiguous() for key, value in state_dict.items()}


def _checkpoint():
    import comfy.ldm.models.autoencoder
    import comfy.sd1_clip
    import comfy.supported_models
    import torch

    model_config = comfy.supported_models.SD15(dict(SD15_UNET))
    model_config.set_inference_dtype(torch.float16, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    _randomised(model.diffusion_model, seed=1)
    text_encoder = _randomised(comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16), seed=2)
    vae = _randomised(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE), embed_dim=4), seed=3)
    weights = model.state_dict_for_saving(
        clip_state_dict=_half(text_encoder.state_dict(), "clip_l."), vae_state_dict=_half(vae.state_dict())
    )
    return _half(weights)


def _clip_vision():
    import comfy.clip_vision

    config = Path(comfy.clip_vision.__file__).with_name("clip_vision_config_h.json")
    encoder = comfy.clip_vision.ClipVisionModel(str(config))
    return _half(_randomised(encoder.model, seed=4).state_dict())


def _ipadapter():
    """ip-adapter_sd15: the official keys and shapes (tests/official_shapes.py), random values, fp16."""
    _tiny_models()  # puts tests/ on sys.path
    import official_shapes
    import pack_import  # noqa: F401  (official_shapes builds the tensors with the pack's own modules)

    return official_shapes.official_state_dict(official_shapes.VARIANTS["ip-adapter_sd15"])


def _controlnet():
    import comfy.cldm.cldm
    import torch

    config = {key: value for key, value in SD15_UNET.items() if key != "out_channels"}
    control = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float16, **config)
    return _half(_randomised(control, seed=6).state_dict(), "control_model.")


def _t2i_adapter():
    import comfy.t2i_adapter.adapter

    # Canny: one input channel, pixel-unshuffled by 8 -> 64 channels.
    adapter = comfy.t2i_adapter.adapter.Adapter(
        cin=64, channels=[320, 640, 1280, 1280], nums_rb=2, ksize=1, sk=True, use_conv=False, xl=False
    )
    return _half(_randomised(adapter, seed=7).state_dict())


BUILDERS = {
    CHECKPOINT: _checkpoint,
    CLIP_VISION: _clip_vision,
    IPADAPTER: _ipadapter,
    CONTROLNET: _controlnet,
    T2I_ADAPTER: _t2i_adapter,
}


def _remove_leftovers(directory: Path) -> None:
    """Half-written files of an interrupted run: ours (`*.partial-<pid>`) and safetensors' own (`.tmp*`)."""
    for folder in {directory} | {directory / Path(name).parent for name in FILES}:
        for path in folder.glob("*"):
            if path.is_file() and (".partial-" in path.name or path.name.startswith(".tmp")):
                path.unlink()


def generate(directory: Path, *, comfyui_dir: Path) -> None:
    with _locked(directory):
        _remove_leftovers(directory)
        files = {name: size for name, size in _read_stamp(directory).items() if name in FILES}
        missing = [name for name in FILES if not _is_recorded(directory, name, files)]
        if not missing:
            return
        _import_comfy(comfyui_dir)
        import safetensors.torch

        for name in missing:
            started = time.monotonic()
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
            safetensors.torch.save_file(BUILDERS[name](), str(partial), metadata=METADATA)
            os.chmod(partial, 0o644)
            os.replace(partial, target)
            files[name] = target.stat().st_size
            _write_stamp(directory, files)
            print(f"[standins] {name}: {files[name] / 2**20:.0f} MiB in {time.monotonic() - started:.1f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=default_dir(), help="where to write them (default: %(default)s)")
    options = parser.parse_args(argv)
    if is_complete(options.dir):
        print(f"[standins] ready in {options.dir}")
        return 0
    print(f"[standins] generating random stand-in models in {options.dir} (once; about a minute)", flush=True)
    generate(options.dir, comfyui_dir=default_comfyui_dir())
    print(f"[standins] ready in {options.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
