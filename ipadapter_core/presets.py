"""The Unified Loader's presets: every supported official adapter file (and ostris's community composition adapters)
with the image encoder it needs, where each file goes, where to download it, and the names it is found by. Pure data
and pure lookups (no ComfyUI).

A file is found by its official name and by the names users commonly give it (the README tables of the IP-Adapter
packs rename h94's `image_encoder/model.safetensors` to CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors or
CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors; ComfyUI-Manager used to save them as SD1.5/model.safetensors and
SDXL/model.safetensors). Names are compared leniently: any case, '-', '_', '.' and spaces ignored, any extension,
in any subfolder. A name of several parts (`sd15/model`) must match the last folders of the path too.
"""

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import IPAdapterError
from .model_sources import ModelSource, model_source

IPADAPTER_FOLDER = "ipadapter"
CLIP_VISION_FOLDER = "clip_vision"
# Of several matching files, the first of these extensions wins (then the shorter, then the alphabetically first path).
PREFERRED_EXTENSIONS = (".safetensors", ".sft", ".bin")


@dataclass(frozen=True)
class ModelFile:
    source: ModelSource  # its folder, the name to save it under and its official download (model_sources.py)
    also_named: tuple[str, ...] = ()  # other names it is found by, in order of preference ("sd15/model": folder/name)

    @property
    def folder(self) -> str:
        return self.source.folder

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def url(self) -> str:
        return self.source.url

    @property
    def download_name(self) -> str:
        return self.source.renamed_from or self.source.name


@dataclass(frozen=True)
class Preset:
    name: str
    adapter: ModelFile
    encoder: ModelFile | None  # None: the adapter reads no CLIP encoder (FaceID, Portrait)
    variants: tuple[str, ...]  # what Load IPAdapter may detect the adapter file as (unet/format.py AdapterSpec.variant)


VIT_H_FILE = ModelFile(
    model_source(CLIP_VISION_FOLDER, "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    also_named=("CLIP-ViT-H-14", "sd15/model", "models/image_encoder/model"),
)
VIT_BIGG_FILE = ModelFile(
    model_source(CLIP_VISION_FOLDER, "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"),
    also_named=("CLIP-ViT-bigG-14", "sdxl/model", "sdxl_models/image_encoder/model"),
)


def _adapter(name: str, *also_named: str) -> ModelFile:
    return ModelFile(model_source(IPADAPTER_FOLDER, name), also_named=also_named)


PRESETS = {
    preset.name: preset
    for preset in (
        Preset("SD1.5 standard", _adapter("ip-adapter_sd15.safetensors"), VIT_H_FILE, ("ip-adapter_sd15",)),
        Preset(
            "SD1.5 light",
            _adapter("ip-adapter_sd15_light_v11.bin", "ip-adapter_sd15_light"),
            VIT_H_FILE,
            ("ip-adapter_sd15_light_v11", "ip-adapter_sd15_light"),
        ),
        Preset("SD1.5 plus", _adapter("ip-adapter-plus_sd15.safetensors"), VIT_H_FILE, ("ip-adapter-plus_sd15",)),
        Preset(
            "SD1.5 plus-face",
            _adapter("ip-adapter-plus-face_sd15.safetensors"),
            VIT_H_FILE,
            ("ip-adapter-plus-face_sd15",),
        ),
        Preset(
            "SD1.5 full-face",
            _adapter("ip-adapter-full-face_sd15.safetensors"),
            VIT_H_FILE,
            ("ip-adapter-full-face_sd15",),
        ),
        Preset("SD1.5 ViT-G", _adapter("ip-adapter_sd15_vit-G.safetensors"), VIT_BIGG_FILE, ("ip-adapter_sd15_vit-G",)),
        Preset(
            "SDXL standard (ViT-bigG)", _adapter("ip-adapter_sdxl.safetensors"), VIT_BIGG_FILE, ("ip-adapter_sdxl",)
        ),
        Preset(
            "SDXL ViT-H", _adapter("ip-adapter_sdxl_vit-h.safetensors"), VIT_H_FILE, ("ip-adapter_sdxl_vit-h",)
        ),
        Preset(
            "SDXL plus ViT-H",
            _adapter("ip-adapter-plus_sdxl_vit-h.safetensors"),
            VIT_H_FILE,
            ("ip-adapter-plus_sdxl_vit-h",),
        ),
        Preset(
            "SDXL plus-face ViT-H",
            _adapter("ip-adapter-plus-face_sdxl_vit-h.safetensors"),
            VIT_H_FILE,
            ("ip-adapter-plus-face_sdxl_vit-h",),
        ),
        Preset(
            "SD1.5 composition (community)",
            _adapter("ip_plus_composition_sd15.safetensors"),
            VIT_H_FILE,
            ("ip_plus_composition_sd15",),
        ),
        Preset(
            "SDXL composition (community)",
            _adapter("ip_plus_composition_sdxl.safetensors"),
            VIT_H_FILE,
            ("ip_plus_composition_sdxl",),
        ),
    )
}
PRESET_NAMES = tuple(PRESETS)
IGNORED_IN_NAMES = re.compile(r"[-_. ]")


FACEID_PRESET_NAMES = ("FaceID", "FaceID Plus", "FaceID Plus V2", "FaceID Portrait", "FaceID Portrait unnorm (SDXL)")
FACEID_BASES = ("SD1.5", "SDXL")
INSIGHTFACE_PACK_FILE = ModelFile(model_source("insightface", "buffalo_l.zip"))


def _faceid(name: str, base: str, file: str, encoder: ModelFile | None = None, *also_named: str) -> Preset:
    return Preset(f"{name} {base}", _adapter(file, *also_named), encoder, (file.removesuffix(".bin"), *also_named))


FACEID_PRESETS = {
    (preset.name.rsplit(" ", 1)[0], preset.name.rsplit(" ", 1)[1]): preset
    for preset in (
        _faceid("FaceID", "SD1.5", "ip-adapter-faceid_sd15.bin"),
        _faceid("FaceID Plus", "SD1.5", "ip-adapter-faceid-plus_sd15.bin", VIT_H_FILE),
        _faceid("FaceID Plus V2", "SD1.5", "ip-adapter-faceid-plusv2_sd15.bin", VIT_H_FILE),
        _faceid("FaceID Portrait", "SD1.5", "ip-adapter-faceid-portrait-v11_sd15.bin", None, "ip-adapter-faceid-portrait_sd15"),
        _faceid("FaceID", "SDXL", "ip-adapter-faceid_sdxl.bin"),
        _faceid("FaceID Plus V2", "SDXL", "ip-adapter-faceid-plusv2_sdxl.bin", VIT_H_FILE),
        _faceid("FaceID Portrait", "SDXL", "ip-adapter-faceid-portrait_sdxl.bin"),
        _faceid("FaceID Portrait unnorm (SDXL)", "SDXL", "ip-adapter-faceid-portrait_sdxl_unnorm.bin"),
    )
}


def faceid_preset(name: str, base: str) -> Preset:
    """The FaceID preset `name` for `base`; a clear error for a name or a pair the official files do not have."""
    if name not in FACEID_PRESET_NAMES or base not in FACEID_BASES:
        raise IPAdapterError(
            f"Unknown FaceID preset '{name}' / base '{base}'; presets: {', '.join(FACEID_PRESET_NAMES)}; bases: {', '.join(FACEID_BASES)}."
        )
    preset = FACEID_PRESETS.get((name, base))
    if preset is None:
        have = [other for other, other_base in FACEID_PRESETS if other_base == base]
        raise IPAdapterError(f"There is no official {name} file for {base}. For {base} use one of: {', '.join(have)}.")
    return preset


def preset_named(name: str) -> Preset:
    if name not in PRESETS:
        raise IPAdapterError(f"Unknown preset '{name}'; use one of: {', '.join(PRESET_NAMES)}.")
    return PRESETS[name]


def _name_parts(path: str, *, has_extension: bool) -> tuple[str, ...]:
    """'SD1.5/Model.safetensors' -> ('sd15', 'model'): folders and stem, lower case, without '-', '_', '.', ' '."""
    parts = [part for part in path.replace("\\", "/").split("/") if part]
    if has_extension and parts:
        parts[-1] = os.path.splitext(parts[-1])[0]
    return tuple(IGNORED_IN_NAMES.sub("", part.lower()) for part in parts)


def _preference(path: str) -> tuple:
    extension = os.path.splitext(path)[1].lower()
    rank = PREFERRED_EXTENSIONS.index(extension) if extension in PREFERRED_EXTENSIONS else len(PREFERRED_EXTENSIONS)
    return rank, len(path), path


def find_model_file(wanted: ModelFile, available: Sequence[str]) -> str | None:
    """The entry of `available` (paths relative to a model folder, as ComfyUI lists them) that is `wanted`: the
    official name exactly, else the first of its names (official, then `also_named`) that some entry matches
    leniently; None when there is none."""
    exact = [path for path in available if os.path.basename(path.replace("\\", "/")) == wanted.name]
    if exact:
        return min(exact, key=_preference)
    entries = [(path, _name_parts(path, has_extension=True)) for path in available]
    for name in (wanted.name, *wanted.also_named):
        target = _name_parts(name, has_extension=name == wanted.name)
        found = [path for path, parts in entries if parts[-len(target) :] == target]
        if found:
            return min(found, key=_preference)
    return None


def missing_files_error(preset: Preset, missing: Sequence[ModelFile], *, folders: Mapping[str, Sequence[str]]) -> IPAdapterError:
    """The message that says, for each file, what it is called, which folder it goes in and where to download it."""
    lines = [f"Preset '{preset.name}' needs {'these files' if len(missing) > 1 else 'this file'}, not found:"]
    for file in missing:
        where = ", ".join(folders.get(file.folder, ())) or f"ComfyUI/models/{file.folder}"
        if file.name.endswith(".zip"):  # a model pack: its files go into a folder of their own
            pack = file.name.removesuffix(".zip")
            lines.append(f"- the {pack} model pack: download {file.url} and unzip it into models/{pack}/ of the {file.folder} model folder ({where}).")
            continue
        rename = f", then rename it to {file.name}" if file.download_name != file.name else ""
        lines.append(f"- {file.name}: put it in the {file.folder} model folder ({where}). Download {file.url}{rename}.")
    lines.append("Then queue the prompt again.")
    return IPAdapterError("\n".join(lines))


def preset_files(
    preset: Preset, *, available: Mapping[str, Sequence[str]], folders: Mapping[str, Sequence[str]], extra_missing: Sequence[ModelFile] = ()
) -> tuple[str, str | None]:
    """(adapter file, encoder file or None) of the preset among `available[folder]` (ComfyUI's file lists); an error
    naming every missing file (and `extra_missing`, found missing by the caller), its folder (`folders[folder]`: the
    paths) and its download otherwise."""
    wanted = [file for file in (preset.adapter, preset.encoder) if file is not None]
    found = {file: find_model_file(file, available.get(file.folder, ())) for file in wanted}
    missing = [file for file, path in found.items() if path is None] + list(extra_missing)
    if missing:
        raise missing_files_error(preset, missing, folders=folders)
    return found[preset.adapter], found.get(preset.encoder)


def check_detected_variant(preset: Preset, variant: str, *, path: str) -> None:
    """The adapter file found for the preset must be that adapter; a renamed file of another kind is refused."""
    if variant not in preset.variants:
        raise IPAdapterError(
            f"'{path}' was picked for preset '{preset.name}' by its name, but it is {variant}, not "
            f"{preset.variants[0]}. Rename or remove it, and put {preset.adapter.name} ({preset.adapter.url}) "
            f"in the {preset.adapter.folder} model folder."
        )
