"""Scoring many generated images: (image prompt, generated image, caption, λ) rows from a folder or a CSV, scored with
CLIP-I / CLIP-T, written to a CSV, and summarised per λ.

A folder holds generated PNGs whose text chunk `decoupled_ipadapter` is the JSON the pack's batch tool writes:
{"job_id", "image" (the reference file name), "prompt" (the caption), "weight" (λ), "seed", "server", "workflow"};
the reference files are looked up in a references folder. A CSV has the columns image_prompt, generated, caption and
(optionally) weight; relative paths are relative to the CSV's folder.
"""

import csv
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..ipadapter_core.errors import IPAdapterError
from .clip_scores import embed_images, scores_of_embeddings

PNG_METADATA_KEY = "decoupled_ipadapter"
INPUT_COLUMNS = ("image_prompt", "generated", "caption", "weight")
REQUIRED_COLUMNS = ("image_prompt", "generated")
OUTPUT_COLUMNS = (*INPUT_COLUMNS, "clip_i", "clip_t", "clip_t_cosine")
# What Pillow raises for a damaged, truncated or oversized image file (SyntaxError: some broken PNG chunks).
IMAGE_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ScoreJob:
    image_prompt: Path
    generated: Path
    caption: str
    weight: float | None  # λ; None when the source does not say


@dataclass(frozen=True)
class ScoredJob:
    job: ScoreJob
    clip_i: float
    clip_t: float | None
    clip_t_cosine: float | None


def parse_weight(value, where: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise IPAdapterError(f"{where}: weight '{value}' is not a number. Write λ as a number such as 0.5, or leave it empty.") from None
    if not math.isfinite(weight):
        raise IPAdapterError(f"{where}: weight '{value}' is not a finite number.")
    return weight


def png_job_metadata(path: Path) -> dict | None:
    """The JSON of a generated PNG's `decoupled_ipadapter` text chunk, or None if it has none."""
    try:
        with Image.open(path) as image:  # `text` reads the whole file: text chunks may follow the pixels
            text = getattr(image, "text", {}).get(PNG_METADATA_KEY)
    except IMAGE_READ_ERRORS as error:
        raise IPAdapterError(
            f"'{path.name}' cannot be read as a PNG ({error}): it is damaged or not a PNG. Remove it from '{path.parent}' "
            "or generate it again."
        ) from error
    if text is None:
        return None
    try:
        metadata = json.loads(text)
    except ValueError as error:
        raise IPAdapterError(f"'{path.name}': its {PNG_METADATA_KEY} text chunk is not JSON ({error}).") from error
    if not isinstance(metadata, dict):
        raise IPAdapterError(f"'{path.name}': its {PNG_METADATA_KEY} text chunk is not a JSON object.")
    return metadata


def jobs_from_folder(folder: Path, references: Path) -> tuple[list[ScoreJob], list[Path]]:
    """(jobs, PNGs skipped because they carry no metadata) for the PNGs directly in `folder`, sorted by name."""
    if not folder.is_dir():
        raise IPAdapterError(f"Folder '{folder}' does not exist. Give the folder the batch tool wrote its PNGs to.")
    if not references.is_dir():
        raise IPAdapterError(f"References folder '{references}' does not exist. Give the folder holding the reference images.")
    jobs, skipped = [], []
    for path in sorted(folder.glob("*.png")):
        metadata = png_job_metadata(path)
        if metadata is None:
            skipped.append(path)
            continue
        reference_name = metadata.get("image")
        if not reference_name:
            raise IPAdapterError(f"'{path.name}': its {PNG_METADATA_KEY} metadata names no reference image ('image').")
        reference = references / Path(str(reference_name)).name
        if not reference.is_file():
            raise IPAdapterError(
                f"'{path.name}' was generated from '{reference_name}', which is not in '{references}'. "
                "Put the reference images there, or point --references at their folder."
            )
        jobs.append(
            ScoreJob(
                image_prompt=reference,
                generated=path,
                caption=str(metadata.get("prompt") or ""),
                weight=parse_weight(metadata.get("weight"), f"'{path.name}'"),
            )
        )
    if not jobs:
        raise IPAdapterError(
            f"No PNG in '{folder}' carries the {PNG_METADATA_KEY} metadata of the batch tool. Score a CSV of "
            f"({', '.join(INPUT_COLUMNS)}) instead."
        )
    return jobs, skipped


def jobs_from_csv(csv_path: Path) -> list[ScoreJob]:
    if not csv_path.is_file():
        raise IPAdapterError(f"CSV file '{csv_path}' does not exist.")
    with csv_path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise IPAdapterError(
                f"'{csv_path.name}' has no column {', '.join(missing)}. Its header must name {', '.join(INPUT_COLUMNS)} "
                "(caption and weight may be left empty)."
            )
        rows = list(reader)
    base = csv_path.parent
    jobs = []
    for line, row in enumerate(rows, start=2):
        where = f"'{csv_path.name}' line {line}"
        paths = {column: base / (row[column] or "").strip() for column in REQUIRED_COLUMNS}
        for column, path in paths.items():
            if not path.is_file():
                raise IPAdapterError(f"{where}: {column} '{row[column]}' is not a file (paths are relative to the CSV's folder).")
        jobs.append(
            ScoreJob(
                image_prompt=paths["image_prompt"],
                generated=paths["generated"],
                caption=(row.get("caption") or "").strip(),
                weight=parse_weight(row.get("weight"), where),
            )
        )
    if not jobs:
        raise IPAdapterError(f"'{csv_path.name}' has a header but no rows to score.")
    return jobs


def load_image(path: Path) -> torch.Tensor:
    """An image file as ComfyUI's Load Image gives it: IMAGE `[1, H, W, 3]`, fp32 in [0, 1], EXIF orientation applied."""
    try:
        with Image.open(path) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except IMAGE_READ_ERRORS as error:
        raise IPAdapterError(f"'{path}' cannot be read as an image ({error}).") from error
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)[None]  # [1, H, W, 3]


def score_jobs(model, jobs: list[ScoreJob], *, after_job: Callable[[int], None] = lambda index: None) -> list[ScoredJob]:
    """Scores every job with an `OpenCLIPModel`; each reference image and caption is encoded once."""
    from ..openclip.model import require_text_tower

    reference_embeds: dict[Path, torch.Tensor] = {}
    caption_embeds: dict[str, torch.Tensor] = {}
    scored = []
    for index, job in enumerate(jobs):
        if job.image_prompt not in reference_embeds:
            reference_embeds[job.image_prompt] = embed_images(model.vision, load_image(job.image_prompt))
        caption = None
        if job.caption:
            if job.caption not in caption_embeds:
                text = require_text_tower(model, f"'{job.generated.name}'")
                caption_embeds[job.caption] = text.encode_text([job.caption])
            caption = caption_embeds[job.caption]
        scores = scores_of_embeddings(
            embed_images(model.vision, load_image(job.generated)),
            reference_embeds[job.image_prompt],
            caption,
            where=f"'{job.generated.name}'",
        )
        scored.append(
            ScoredJob(
                job=job,
                clip_i=scores.clip_i.item(),
                clip_t=None if scores.clip_t is None else scores.clip_t.item(),
                clip_t_cosine=None if scores.clip_t_cosine is None else scores.clip_t_cosine.item(),
            )
        )
        after_job(index)
    return scored


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def write_scores_csv(path: Path, scored: Iterable[ScoredJob]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(OUTPUT_COLUMNS)
        for item in scored:
            job = item.job
            writer.writerow(
                [
                    str(job.image_prompt),
                    str(job.generated),
                    job.caption,
                    _cell(job.weight),
                    _cell(item.clip_i),
                    _cell(item.clip_t),
                    _cell(item.clip_t_cosine),
                ]
            )


@dataclass(frozen=True)
class WeightSummary:
    weight: float
    count: int
    clip_i: float  # mean
    clip_t: float | None  # mean over the images with a caption; None if none had one


def summary_by_weight(scored: Iterable[ScoredJob]) -> list[WeightSummary]:
    """Mean scores per λ, in increasing λ; images without a λ are left out."""
    groups: dict[float, list[ScoredJob]] = {}
    for item in scored:
        if item.job.weight is not None:
            groups.setdefault(item.job.weight, []).append(item)
    summaries = []
    for weight in sorted(groups):
        items = groups[weight]
        with_caption = [item.clip_t for item in items if item.clip_t is not None]
        summaries.append(
            WeightSummary(
                weight=weight,
                count=len(items),
                clip_i=sum(item.clip_i for item in items) / len(items),
                clip_t=sum(with_caption) / len(with_caption) if with_caption else None,
            )
        )
    return summaries
