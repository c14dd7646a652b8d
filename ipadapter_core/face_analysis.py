"""InsightFace's face analysis for the FaceID adapters: a model pack from the models folder, the face embedding of
each picture, and the aligned face crop that FaceID Plus reads with CLIP.

InsightFace and onnxruntime are an optional requirement (`FACEID_PIP`); nothing here imports them before a FaceID
node runs, and nothing downloads: a pack is used only where its folder already holds its files.

Conventions (ours where the reference is loose): each picture on its own is `np.clip(255·x, 0, 255)` as uint8,
RGB → BGR, `FaceAnalysis(name, root, providers=[provider + "ExecutionProvider"])` (the detection and recognition
models only: the other models of a pack change neither the faces found nor their embeddings),
`prepare(det_size=(640, 640))` with the default threshold 0.5, and `faces[0]`, InsightFace's highest-scoring
detection. Its `normed_embedding` (its raw `embedding` for the Portrait file trained on those, `unnorm`), and its
aligned crop `norm_crop(bgr, kps, size)` back in RGB: 224 px for FaceID Plus's CLIP input (the reference's, SD1.5
and SDXL alike), and for Encode Face's face_image 224 px (SD1.5) or 256 px (SDXL), the port's sizes.
"""

import importlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from .errors import IPAdapterError

FACEID_PIP = 'pip install "insightface>=1.0,<3" "onnxruntime>=1.30.0,<2"'
OFFICIAL_PACK = "buffalo_l"
OFFICIAL_FILES = {"det_10g.onnx": "detection", "w600k_r50.onnx": "recognition"}
PACK_SOURCE = (
    "InsightFace's buffalo_l.zip (https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip): "
    "unzip it so that models/insightface/models/buffalo_l/ holds det_10g.onnx and w600k_r50.onnx"
)
DET_SIZE = (640, 640)
CLIP_CROP_SIZE = 224  # the aligned crop FaceID Plus reads with CLIP, on SD1.5 and SDXL (the reference's)
FACE_IMAGE_SIZE = {"SD1.5": 224, "SDXL": 256}  # Encode Face's face_image output per base model (the port's)
CPU = "CPU"
REMOTE = {"AzureExecutionProvider"}  # runs models on a remote endpoint, not here


def missing_packages() -> str | None:
    """None when insightface and onnxruntime can be imported, else the message that says what to install."""
    missing = []
    for name in ("insightface", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:  # not installed, or installed but broken (a failed build, a missing library)
            missing.append(name)
    if not missing:
        return None
    return (
        f"FaceID needs {' and '.join(missing)}, which {'are' if len(missing) > 1 else 'is'} not installed (or cannot be imported). Install "
        f"them into ComfyUI's Python with: {FACEID_PIP} (then restart ComfyUI). The other nodes work without them."
    )


def require_packages() -> None:
    problem = missing_packages()
    if problem is not None:
        raise IPAdapterError(problem)


def providers() -> list[str]:
    """The onnxruntime execution providers of this install, without the suffix ("CPU" first, always)."""
    try:
        import onnxruntime
    except ImportError:  # FaceID's nodes are refused with the pip command; the combo still offers CPU
        return [CPU]
    found = [name.removesuffix("ExecutionProvider") for name in onnxruntime.get_available_providers() if name not in REMOTE]
    return list(dict.fromkeys([CPU, *found]))


def pack_names(roots: list[str]) -> list[str]:
    """The model packs (folders) under `<root>/models/` of each insightface folder."""
    found = []
    for root in roots:
        models = os.path.join(root, "models")
        if os.path.isdir(models):
            found += [name for name in sorted(os.listdir(models)) if os.path.isdir(os.path.join(models, name))]
    return list(dict.fromkeys(found))


def pack_root(roots: list[str], name: str) -> str:
    """The insightface folder that holds the pack `name` with its ONNX files; a clear error when there is none."""
    for root in roots:
        folder = os.path.join(root, "models", name)
        if os.path.isdir(folder):
            check_pack_files(folder, name)
            return root
    where = " or ".join(os.path.join(root, "models", name) for root in roots) or "models/insightface/models/" + name
    raise IPAdapterError(
        f"The InsightFace model pack '{name}' is not there: {where} does not exist. Put {PACK_SOURCE}. "
        "Nothing is downloaded at run time."
    )


def check_pack_files(folder: str, name: str) -> None:
    onnx_files = sorted(entry for entry in os.listdir(folder) if entry.endswith(".onnx"))
    expected = OFFICIAL_FILES if name == OFFICIAL_PACK else {}
    missing = [file for file in expected if file not in onnx_files]
    if missing or not onnx_files:
        lacking = ", ".join(missing) or "ONNX files"
        raise IPAdapterError(f"The InsightFace model pack '{name}' ({folder}) lacks {lacking}. Put {PACK_SOURCE}.")
    for file in onnx_files:
        if os.path.getsize(os.path.join(folder, file)) == 0:
            raise IPAdapterError(f"'{file}' of the InsightFace pack '{name}' is empty (0 bytes). Download {PACK_SOURCE}.")


@dataclass(frozen=True, eq=False)
class FaceAnalyser:
    """A prepared `insightface.app.FaceAnalysis` and where it came from (for messages)."""

    analysis: object
    name: str  # the model pack, e.g. "buffalo_l"
    provider: str  # "CPU", "CUDA", …


def load_face_analysis(roots: list[str], name: str, provider: str) -> FaceAnalyser:
    """The pack `name` from the insightface folders `roots`, prepared for 640×640 detection on `provider`."""
    require_packages()
    root = pack_root(roots, name)
    from insightface.app import FaceAnalysis

    folder = os.path.join(root, "models", name)
    try:
        analysis = FaceAnalysis(
            name=name, root=root, providers=[provider + "ExecutionProvider"], allowed_modules=["detection", "recognition"]
        )
        analysis.prepare(ctx_id=0, det_size=DET_SIZE)
    except (AssertionError, KeyError) as error:
        raise IPAdapterError(
            f"The InsightFace pack '{name}' ({folder}) has no usable face detector and recogniser ({error!r}). Put {PACK_SOURCE}."
        ) from error
    except Exception as error:  # onnx / onnxruntime raise their own types for a damaged file
        raise IPAdapterError(
            f"The InsightFace pack '{name}' ({folder}) cannot be loaded: {error}. A file is probably damaged or "
            f"truncated: download {PACK_SOURCE}."
        ) from error
    if "recognition" not in analysis.models:
        raise IPAdapterError(f"The InsightFace pack '{name}' ({folder}) has no face recogniser (w600k_r50.onnx). Put {PACK_SOURCE}.")
    return FaceAnalyser(analysis=analysis, name=name, provider=provider)


def to_bgr(picture: torch.Tensor) -> np.ndarray:
    """One ComfyUI picture `[H, W, C]` in 0..1 -> the uint8 BGR array InsightFace reads `[H, W, 3]`."""
    rgb = np.clip(255.0 * picture[:, :, :3].float().cpu().numpy(), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


@dataclass(frozen=True)
class FaceFound:
    index: int  # the picture's index in the batch
    embedding: np.ndarray  # [512], normed or raw as asked
    landmarks: np.ndarray  # [5, 2] the five key points (eyes, nose, mouth corners) in the picture's pixels


def aligned_faces(images: torch.Tensor, faces: list[FaceFound], *, size: int) -> torch.Tensor:
    """InsightFace's aligned crop (`norm_crop` to the ArcFace template) of each found face, `size` pixels square,
    in the order of `faces`: `[N, size, size, 3]` RGB in 0..1."""
    from insightface.utils import face_align

    crops = [face_align.norm_crop(to_bgr(images[face.index]), landmark=face.landmarks, image_size=size)[:, :, ::-1] for face in faces]
    return torch.from_numpy(np.ascontiguousarray(np.stack(crops))).float() / 255.0  # [N, size, size, 3]


def find_faces(analyser: FaceAnalyser, images: torch.Tensor, *, raw_embedding: bool, skip_missing: bool, after_image=lambda: None) -> list[FaceFound]:
    """The first face (InsightFace's highest score) of each picture of `images` `[B, H, W, C]`. A picture without
    a face is an error naming its index, or left out when `skip_missing`; no face at all is always an error."""
    found, missing = [], []
    for index in range(images.shape[0]):
        bgr = to_bgr(images[index])
        faces = analyser.analysis.get(bgr)
        after_image()
        if not faces:
            if not skip_missing:
                raise IPAdapterError(
                    f"No face was found in image {index} of the batch (counting from 0). Use a picture where the face is "
                    "large, frontal and well lit, crop it closer to the face, or set skip_images_without_face to leave "
                    "such pictures out."
                )
            missing.append(index)
            continue
        face = faces[0]
        embedding = face.embedding if raw_embedding else face.normed_embedding
        found.append(FaceFound(index=index, embedding=np.asarray(embedding, dtype=np.float32), landmarks=np.asarray(face.kps)))
    if not found:
        raise IPAdapterError(
            f"No face was found in any of the {images.shape[0]} images. Use pictures where the face is large, "
            "frontal and well lit, or crop them closer to the face."
        )
    return found
