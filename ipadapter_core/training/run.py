"""One training run from start to file: the adapter to start from (a new one, a file to fine-tune, or the saved
state of a run to continue), the encoded dataset, the steps, the saved file and the adapter Apply takes."""

import copy
import os
from collections.abc import Callable, Sequence

import torch

from ..adapter import LoadedAdapter
from ..encoding import check_encoder_fits, encoder_widths
from ..errors import IPAdapterError
from ..formats import split_into_parts
from ..memory import ManagedAdapter, manage
from ..unet.apply import check_adapter_fits_model
from ..unet.format import AdapterSpec, build_adapter_model, detect_spec
from .dataset import Caption, checked_pictures, encode_training_data
from .files import official_tensors, read_matching_state, write_safetensors, write_training_state
from .loop import TrainingSettings, text_keys_values, train, trainable_layers
from .method import ADAPTER_KINDS, new_adapter

NEW_ADAPTER_DTYPE = torch.float16  # the official files' dtype
OUTPUT_EXTENSION = ".safetensors"


def output_file_path(folder: str, name: str) -> str:
    """Where the adapter `name` is saved in the model folder `folder`: a relative path inside it, `.safetensors`."""
    name = name.strip()
    if not name.endswith(OUTPUT_EXTENSION):
        name += OUTPUT_EXTENSION
    path = os.path.normpath(os.path.join(folder, name))
    if os.path.isabs(name) or not path.startswith(os.path.normpath(folder) + os.sep) or name == OUTPUT_EXTENSION:
        raise IPAdapterError(
            f"the file name '{name}' does not name a file inside {folder}; give a name such as "
            "'my-ip-adapter_sd15.safetensors' (subfolders are allowed, '..' and absolute paths are not)."
        )
    return path


def fine_tune_start(start: ManagedAdapter, layers, clip_vision) -> tuple[torch.nn.Module, AdapterSpec]:
    """An fp32 copy of the adapter to fine-tune, after checking it fits the model and the image encoder."""
    adapter = start.adapter
    if not isinstance(adapter.spec, AdapterSpec):
        raise IPAdapterError(
            f"'{adapter.source}' is a {adapter.spec.variant} adapter; training works on SD1.5 and SDXL adapters "
            "(ip-adapter_*, ip-adapter-plus_*, ip-adapter-full-face_*). Connect one of those, or none to train a new one."
        )
    check_adapter_fits_model(adapter, [layer for layer, _ in layers])
    check_encoder_fits(clip_vision, adapter.spec, adapter.source)
    return copy.deepcopy(adapter.model).float().cpu(), adapter.spec


def new_start(model, layers, clip_vision, *, kind: str, seed: int) -> tuple[torch.nn.Module, str]:
    """A new adapter of `kind` for the model, reading the connected CLIP vision model, and the CLIP output it reads."""
    projection, clip_output = ADAPTER_KINDS[kind]
    widths = encoder_widths(clip_vision)
    if widths is None:
        raise IPAdapterError(
            "the connected vision model has no CLIP image projection; IP-Adapters read a CLIP image encoder. Load "
            "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors with CLIPVisionLoader."
        )
    embedding_dim = widths[0] if projection == "linear" else widths[1]
    adapter = new_adapter(
        kind, [layer for layer, _ in layers], text_keys_values(model), embedding_dim=embedding_dim, seed=seed
    )
    return adapter, clip_output


def managed_from_file_tensors(tensors: dict[str, torch.Tensor], path: str) -> ManagedAdapter:
    """The saved file's tensors as Load IPAdapter gives them: detected from the tensors, built, managed."""
    name = os.path.basename(path)
    parts = split_into_parts(tensors, name)
    spec = detect_spec(parts, name)
    return manage(LoadedAdapter(spec=spec, model=build_adapter_model(spec, parts, name), source=name))


def train_adapter_file(
    model,
    *,
    encode_latents: Callable[[torch.Tensor], torch.Tensor],
    clip_vision,
    encode_text: Callable[[str], Caption],
    images: Sequence[torch.Tensor],
    captions: Sequence[str],
    start: ManagedAdapter | None,
    start_path: str | None,
    kind: str,
    settings: TrainingSettings,
    output_path: str,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
) -> tuple[ManagedAdapter, list[float]]:
    """Train (a new adapter of `kind`, or a fine-tune of `start`, continuing the training state saved beside
    `start_path` when it matches), save to `output_path` (official format, plus the training state beside it), and
    return the saved adapter as Load IPAdapter would load it, with the loss per step."""
    layers = trainable_layers(model)
    pictures, captions = checked_pictures(images, captions)
    resume = None
    if start is not None:
        adapter, spec = fine_tune_start(start, layers, clip_vision)
        clip_output = spec.clip_output
        file_tensors = start.adapter.model.state_dict()
        save_dtype = next(iter(file_tensors.values())).dtype
        resume = read_matching_state(start_path, file_tensors) if start_path else None
    else:
        adapter, clip_output = new_start(model, layers, clip_vision, kind=kind, seed=settings.seed)
        save_dtype = NEW_ADAPTER_DTYPE
    data = encode_training_data(
        pictures, captions, encode_latents=encode_latents, clip_vision=clip_vision, clip_output=clip_output,
        encode_text=encode_text,
    )  # fmt: skip
    run = train(model, adapter, data, settings, resume=resume, on_step=on_step)
    tensors = official_tensors(run.adapter, dtype=save_dtype)
    write_safetensors(tensors, output_path)
    write_training_state(output_path, run.adapter, run.optimizer, steps=run.steps_done)
    return managed_from_file_tensors(tensors, output_path), run.losses
