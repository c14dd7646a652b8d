"""The pure part of the batch queue (tools/batch_queue.py): jobs, their ids, the CSV, the workflow edits, the
journal and the PNG chunk. No network here (comfy_client only for its workflow edits).

A job is one reference image, one text prompt, one λ and one seed. Its id is a digest of those (the image by
name and content) and of the workflow's file name, so the same job gets the same id in every run: that is how a
resumed run recognises the jobs it has finished.
"""

import copy
import csv
import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import comfy_client

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CSV_COLUMNS = ("image", "prompt", "weight")  # required; "seed" is optional
PNG_CHUNK_KEY = "decoupled_ipadapter"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Inputs followed upstream from KSampler's `positive` to the CLIPTextEncode that holds the text prompt
# (through conditioning nodes such as ControlNetApplyAdvanced or ConditioningCombine).
CONDITIONING_INPUTS = ("positive", "conditioning", "conditioning_1", "conditioning_to")


class BatchError(ValueError):
    """A bad input to the batch queue, with a message that names the file or node and says what to do."""


@dataclass(frozen=True)
class Job:
    image: Path  # the reference image file
    prompt: str
    weight: float  # λ of every DecoupledIPAdapterApply
    seed: int

    @property
    def image_name(self) -> str:
        return self.image.name


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def job_id(job: Job, *, image_digest: str, workflow_name: str) -> str:
    """16 hex digits, the same for the same parameters in every run (λ compared as a float: 0.5 == 0.50)."""
    key = {
        "image": job.image_name,
        "image_sha256": image_digest,
        "prompt": job.prompt,
        "weight": repr(float(job.weight)),
        "seed": int(job.seed),
        "workflow": workflow_name,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def output_prefix(batch_id: str, job_id_: str) -> str:
    """SaveImage's filename_prefix for a job: unique per output folder (batch) and job, stable on resume."""
    return f"dipa_{batch_id}_{job_id_}"


def first_output_name(prefix: str) -> str:
    """The name SaveImage gives the first image of a prefix that has no file yet (ComfyUI's counter from 1)."""
    return f"{prefix}_00001_.png"


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise BatchError(f"image folder {folder} does not exist: pass a folder of reference images with --images")
    images = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BatchError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def expand_jobs(images, prompts, weights, seeds) -> list[Job]:
    """Every image × prompt × λ × seed, grouped by image, then prompt: consecutive jobs on a server then share the
    encoded reference and text, which ComfyUI keeps from the previous prompt."""
    return [
        Job(image=Path(image), prompt=prompt, weight=float(weight), seed=int(seed))
        for image in images
        for prompt in prompts
        for weight in weights
        for seed in seeds
    ]


def _csv_number(text: str, *, kind, column: str, where: str):
    try:
        return kind(text.strip())
    except ValueError:
        raise BatchError(f"{where}: column {column!r} holds {text!r}, which is not a number") from None


def read_jobs_csv(path: Path, *, default_seed: int) -> list[Job]:
    """Jobs from a CSV with a header: image (a path, relative to the CSV's folder), prompt, weight (λ), and
    optionally seed (empty: `default_seed`). Rows are grouped by image as `expand_jobs` does."""
    path = Path(path)
    if not path.is_file():
        raise BatchError(f"CSV file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [column for column in CSV_COLUMNS if column not in header]
        if missing:
            raise BatchError(
                f"CSV file {path} lacks the column(s) {', '.join(missing)}: its first line must name the columns "
                f"image, prompt, weight and optionally seed (it names {', '.join(header) or 'nothing'})"
            )
        jobs = []
        for line, row in enumerate(reader, start=2):
            row = {(key or "").strip(): (value or "") for key, value in row.items()}
            where = f"{path}, line {line}"
            image = Path(row["image"].strip())
            if not row["image"].strip():
                raise BatchError(f"{where}: the image column is empty")
            image = image if image.is_absolute() else path.parent / image
            if not image.is_file():
                raise BatchError(f"{where}: image {image} does not exist (paths are relative to the CSV's folder)")
            seed = row.get("seed", "").strip()
            jobs.append(
                Job(
                    image=image,
                    prompt=row["prompt"],
                    weight=_csv_number(row["weight"], kind=float, column="weight", where=where),
                    seed=_csv_number(seed, kind=int, column="seed", where=where) if seed else int(default_seed),
                )
            )
    if not jobs:
        raise BatchError(f"CSV file {path} has a header but no rows")
    order = {image: index for index, image in reversed(list(enumerate(job.image for job in jobs)))}
    return sorted(jobs, key=lambda job: order[job.image])  # stable: keeps the rows' order within an image


# --- the workflow --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """The node ids a job edits in an API-format workflow."""

    load_image: tuple[str, ...]
    positive_text: tuple[str, ...]
    apply: tuple[str, ...]
    ksampler: tuple[str, ...]
    save_image: str


def _nodes_of(workflow: dict, class_type: str) -> list[str]:
    return sorted((node_id for node_id, node in workflow.items() if node.get("class_type") == class_type), key=str)


def _link_source(value):
    """The node id an input is wired to ([node_id, output_index]), else None (a widget value)."""
    return str(value[0]) if isinstance(value, list) and len(value) == 2 else None


def _positive_text_node(workflow: dict, ksampler_id: str, *, name: str) -> str:
    source = _link_source(workflow[ksampler_id]["inputs"].get("positive"))
    seen = set()
    while source is not None and source in workflow and source not in seen:
        seen.add(source)
        node = workflow[source]
        if node.get("class_type") == "CLIPTextEncode":
            return source
        inputs = node.get("inputs", {})
        source = next((_link_source(inputs[key]) for key in CONDITIONING_INPUTS if _link_source(inputs.get(key))), None)
    raise BatchError(
        f"workflow {name}: no CLIPTextEncode found upstream of KSampler node {ksampler_id}'s positive input, "
        "so the text prompt has nowhere to go"
    )


def find_targets(workflow, *, name: str) -> Targets:
    """Checks that `workflow` is an API-format workflow a job can be put into, and finds the nodes to edit."""
    if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
        raise BatchError(
            f"workflow {name} is in the editor's format; the batch queue needs the API format "
            "(in ComfyUI: Workflow > Export (API))"
        )
    if not isinstance(workflow, dict) or not all(isinstance(node, dict) and "class_type" in node
                                                 for node in workflow.values()):  # fmt: skip
        raise BatchError(f"workflow {name} is not an API-format workflow (a JSON object of nodes with class_type)")
    ksamplers = _nodes_of(workflow, "KSampler")
    if not ksamplers:
        raise BatchError(f"workflow {name} has no KSampler node: the seed and prompt have nowhere to go")
    load_images = _nodes_of(workflow, "LoadImage")
    encoder_images = {
        _link_source(node["inputs"].get("image"))
        for node in workflow.values()
        if node["class_type"] == "DecoupledIPAdapterEncode"
    }
    references = [node_id for node_id in load_images if node_id in encoder_images]
    references = references or (load_images if len(load_images) == 1 else [])
    if not references:
        raise BatchError(
            f"workflow {name} has no LoadImage node feeding a DecoupledIPAdapterEncode's image: "
            "the reference image has nowhere to go"
        )
    applies = _nodes_of(workflow, "DecoupledIPAdapterApply")
    if not applies:
        raise BatchError(f"workflow {name} has no DecoupledIPAdapterApply node: λ (the weight) has nowhere to go")
    saves = _nodes_of(workflow, "SaveImage")
    if len(saves) != 1:
        raise BatchError(f"workflow {name} has {len(saves)} SaveImage nodes; the batch queue needs exactly one")
    texts = tuple(dict.fromkeys(_positive_text_node(workflow, node_id, name=name) for node_id in ksamplers))
    return Targets(tuple(references), texts, tuple(applies), tuple(ksamplers), saves[0])


def workflow_defaults(workflow: dict, targets: Targets) -> dict:
    """The workflow's own prompt, λ and seed: used where the command line or the CSV gives none."""
    return {
        "prompt": workflow[targets.positive_text[0]]["inputs"]["text"],
        "weight": float(workflow[targets.apply[0]]["inputs"]["weight"]),
        "seed": int(workflow[targets.ksampler[0]]["inputs"]["seed"]),
    }


def job_prompt(workflow: dict, targets: Targets, job: Job, *, image_name: str, prefix: str,
               size: int | None = None, steps: int | None = None) -> dict:  # fmt: skip
    """A copy of `workflow` running `job`: `image_name` is the reference's name on the server."""
    prompt = copy.deepcopy(workflow)
    for node_id in targets.load_image:
        prompt[node_id]["inputs"]["image"] = image_name
    for node_id in targets.positive_text:
        prompt[node_id]["inputs"]["text"] = job.prompt
    for node_id in targets.apply:
        prompt[node_id]["inputs"]["weight"] = float(job.weight)
    for node_id in targets.ksampler:
        prompt[node_id]["inputs"]["seed"] = int(job.seed)
    prompt[targets.save_image]["inputs"]["filename_prefix"] = prefix
    return comfy_client.configure(prompt, size=size, steps=steps)


# --- the journal -----------------------------------------------------------------------------------------------
# JSON lines, appended and fsynced: {"event": "batch", "batch_id"} first, then per job
#   "submit"   (before POST /prompt: job_id, server, prompt_id, prefix),
#   "done"     (after the result file is written: job_id, file),
#   "failed"   (job_id, error), "released" (job_id: taken off a server's queue before it ran).


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class JournalState:
    batch_id: str | None
    done: dict  # job_id -> result file name
    submitted: dict  # job_id -> the last "submit" record of a job neither done, failed nor released since
    failed: dict  # job_id -> error


def read_journal(path: Path) -> JournalState:
    state = JournalState(batch_id=None, done={}, submitted={}, failed={})
    if not Path(path).is_file():
        return state
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break  # a last line cut short by a crash: that record never counted
            raise BatchError(f"journal {path}, line {number} is not JSON: delete the journal to start over") from None
        event, job = record.get("event"), record.get("job_id")
        if event == "batch":
            state.batch_id = state.batch_id or record["batch_id"]
        elif event == "submit":
            state.submitted[job] = record
            state.failed.pop(job, None)
        elif event == "done":
            state.done[job] = record["file"]
            state.submitted.pop(job, None)
        elif event == "failed":
            state.failed[job] = record["error"]
            state.submitted.pop(job, None)
        elif event == "released":
            state.submitted.pop(job, None)
    return state


# --- the result PNG ------------------------------------------------------------------------------------------


def png_text_chunk(key: str, text: str) -> bytes:
    data = key.encode("latin-1") + b"\0" + text.encode("latin-1")
    return struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))


def add_png_text(png: bytes, key: str, text: str) -> bytes:
    """`png` with a tEXt chunk added before IEND; every other chunk (ComfyUI's "prompt", "workflow") kept as is.
    `text` must be Latin-1: pass JSON written with ensure_ascii."""
    if not png.startswith(PNG_SIGNATURE):
        raise BatchError("the server sent a result that is not a PNG")
    end = png.rfind(b"IEND")
    if end < 4:
        raise BatchError("the server sent a PNG without its end chunk (a truncated file)")
    return png[: end - 4] + png_text_chunk(key, text) + png[end - 4 :]


def job_record(job: Job, *, job_id_: str, server: str, workflow_name: str) -> str:
    """The JSON stored in the result PNG's "decoupled_ipadapter" chunk (read by the CLIP score tool)."""
    record = {
        "job_id": job_id_,
        "image": job.image_name,
        "prompt": job.prompt,
        "weight": float(job.weight),
        "seed": int(job.seed),
        "server": server,
        "workflow": workflow_name,
    }
    return json.dumps(record, ensure_ascii=True, sort_keys=True)


def pick_next(pending: list, *, last_image, images_elsewhere) -> int | None:
    """Index of the job a server should take next: one with the reference it encoded last, else one whose
    reference no other server is working on, else the first; None when `pending` is empty."""
    if not pending:
        return None
    for wanted in (lambda job: job.image == last_image, lambda job: job.image not in images_elsewhere):
        index = next((index for index, job in enumerate(pending) if wanted(job)), None)
        if index is not None:
            return index
    return 0
