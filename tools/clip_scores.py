"""Scores generated images with the IP-Adapter paper's CLIP-I and CLIP-T, and plots them against λ.

    python tools/clip_scores.py --model MODEL --folder OUT_DIR --references REF_DIR
    python tools/clip_scores.py --model MODEL --csv jobs.csv

MODEL is an OpenCLIP file (open_clip_pytorch_model.bin or open_clip_model.safetensors; the paper used ViT-L-14):
ViT-H-14, ViT-bigG-14, ViT-L-14 or ViT-B as it is, any other OpenCLIP ViT with its open_clip_config.json beside it.
--folder reads the PNGs the batch tool wrote (their `decoupled_ipadapter` text chunk gives the reference file, the
caption and λ); --csv reads rows of image_prompt, generated, caption, weight. Writes clip_scores.csv (every image and
its scores) and clip_scores.png (the scores against λ) to --out (default: the folder, or the CSV's folder), and prints
the mean scores per λ. Runs with the Python of a ComfyUI: the one named by COMFYUI_DIR, else the ComfyUI whose
custom_nodes folder holds this pack, else this repository's test host (.host/ComfyUI). The images are preprocessed
as in the node (ComfyUI's CLIP preprocessing with the model's own mean, std and resize mode), so both give the same
numbers. A bad input (a damaged PNG, a missing file, a model that cannot be read) ends with one line and status 2.
"""

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def comfyui_dir() -> Path:
    """COMFYUI_DIR, else the ComfyUI this pack is installed in (custom_nodes/<pack>), else the test host."""
    if os.environ.get("COMFYUI_DIR"):
        return Path(os.environ["COMFYUI_DIR"])
    if REPO.parent.name == "custom_nodes" and (REPO.parent.parent / "main.py").is_file():
        return REPO.parent.parent
    return REPO / ".host" / "ComfyUI"


def start_comfy(*, gpu: bool) -> None:
    directory = comfyui_dir()
    if not (directory / "comfy" / "model_management.py").is_file():
        raise SystemExit(f"clip_scores: {directory} is not a ComfyUI folder; set COMFYUI_DIR to the ComfyUI folder")
    sys.path.insert(0, str(directory))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(f"clip_scores: torch is missing in {sys.executable}; run this tool with ComfyUI's Python") from None
    import pack_import  # noqa: F401  (the pack as `decoupled_ipadapter`, beside this file)
    from comfy.cli_args import args

    args.cpu = not gpu
    args.disable_api_nodes = True
    import comfy.model_management  # noqa: F401


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="the OpenCLIP file (.bin or .safetensors)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="folder of generated PNGs carrying the batch tool's metadata")
    source.add_argument("--csv", type=Path, help="CSV with columns image_prompt, generated, caption, weight")
    parser.add_argument("--references", type=Path, help="with --folder: the folder holding the reference images")
    parser.add_argument("--out", type=Path, help="output folder (default: --folder, or the CSV's folder)")
    parser.add_argument("--activation", choices=("auto", "gelu", "quick_gelu"), default="auto",
                        help="the model's MLP activation (auto: the open_clip_config.json beside the file, else the name)")
    parser.add_argument("--gpu", action="store_true", help="run on the GPU (default: CPU)")
    arguments = parser.parse_args(argv)
    if arguments.folder is not None and arguments.references is None:
        parser.error("--folder needs --references (the folder holding the reference images)")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    start_comfy(gpu=arguments.gpu)
    from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
    from decoupled_ipadapter.openclip.model import load_openclip_model
    from decoupled_ipadapter.scoring.jobs import (
        jobs_from_csv,
        jobs_from_folder,
        score_jobs,
        summary_by_weight,
        write_scores_csv,
    )
    from decoupled_ipadapter.scoring.plot import draw_scores_plot

    try:
        if arguments.folder is not None:
            jobs, skipped = jobs_from_folder(arguments.folder, arguments.references)
            for path in skipped:
                print(f"skipped {path.name}: no decoupled_ipadapter metadata", file=sys.stderr)
            out = arguments.out or arguments.folder
        else:
            jobs = jobs_from_csv(arguments.csv)
            out = arguments.out or arguments.csv.parent
        model = load_openclip_model(str(arguments.model), activation=arguments.activation)
        print(f"{model.source}: {model.architecture.describe()}", file=sys.stderr)
        scored = score_jobs(model, jobs, after_job=lambda index: print(f"\rscored {index + 1}/{len(jobs)}", end="", file=sys.stderr))
        print(file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        write_scores_csv(out / "clip_scores.csv", scored)
        summaries = summary_by_weight(scored)
        print("weight  images  CLIP-I  CLIP-T")
        for summary in summaries:
            clip_t = "-" if summary.clip_t is None else f"{summary.clip_t:.4f}"
            print(f"{summary.weight:6g}  {summary.count:6d}  {summary.clip_i:.4f}  {clip_t}")
        print(f"wrote {out / 'clip_scores.csv'}")
        if summaries:
            draw_scores_plot(scored, summaries, out / "clip_scores.png")
            print(f"wrote {out / 'clip_scores.png'}")
        else:
            print("no image has a weight (λ): no plot", file=sys.stderr)
    except (IPAdapterError, OSError) as error:  # OSError: a folder or file that cannot be read or written
        print(f"clip_scores: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
