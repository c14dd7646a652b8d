"""Load InsightFace and IPAdapter Encode Face: the face embeddings the FaceID adapters read.

InsightFace and onnxruntime are optional: without them both nodes are refused when the prompt is queued, with the
one pip command to run, and every other node works. Nothing is downloaded: the packs come from the models folder.
"""

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..ipadapter_core.encoding import encode_faces
from ..ipadapter_core.errors import IPAdapterError
from ..ipadapter_core.face_analysis import OFFICIAL_PACK, load_face_analysis, missing_packages, pack_names, pack_root, providers
from .errors import errors_named_for, one_of, validation_result
from .loader import INSIGHTFACE_FOLDER
from .types import EmbedsType, InsightFaceType, IPAdapterType


def insightface_roots() -> list[str]:
    return folder_paths.get_folder_paths(INSIGHTFACE_FOLDER)


def packages_check(_value=None) -> None:
    problem = missing_packages()
    if problem is not None:
        raise IPAdapterError(problem)


class LoadInsightFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        packs = pack_names(insightface_roots())
        return io.Schema(
            node_id="DecoupledIPAdapterInsightFaceLoader",
            display_name="Load InsightFace",
            category="decoupled_ipadapter",
            description=(
                "Loads an InsightFace model pack (buffalo_l: det_10g.onnx and w600k_r50.onnx) from "
                "models/insightface/models/<pack>/ for IPAdapter Encode Face. It never downloads anything. Needs the "
                "optional packages insightface and onnxruntime."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=packs or [OFFICIAL_PACK],
                    default=OFFICIAL_PACK if OFFICIAL_PACK in packs or not packs else packs[0],
                    tooltip="The model pack, a folder of models/insightface/models/ (buffalo_l, the reference's).",
                ),
                io.Combo.Input(
                    "provider",
                    options=providers(),
                    default="CPU",
                    tooltip="Where onnxruntime runs the face models: CPU always, CUDA and others where installed.",
                ),
            ],
            outputs=[InsightFaceType.Output(display_name="insightface", tooltip="Connect to IPAdapter Encode Face.")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, provider=None):
        """Read when the prompt is queued: the packages, the pack's folder and files (a pack added while ComfyUI
        runs is found), and the provider."""
        for value, check in (
            (True, packages_check),
            (model_name, lambda name: pack_root(insightface_roots(), name)),
            (provider, one_of(providers(), input_name="provider")),
        ):
            result = validation_result(value, check)
            if result is not True:
                return result
        return True

    @classmethod
    def execute(cls, model_name, provider) -> io.NodeOutput:
        with errors_named_for("Load InsightFace"):
            return io.NodeOutput(load_face_analysis(insightface_roots(), model_name, provider))


class EncodeFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterEncodeFace",
            display_name="IPAdapter Encode Face",
            category="decoupled_ipadapter",
            description=(
                "Encodes the face of each picture for an IP-Adapter FaceID file: InsightFace's embedding of the "
                "highest-scoring face (and, for FaceID Plus / PlusV2, CLIP ViT-H's hidden states of the aligned face "
                "crop). Several pictures are one image prompt (Portrait: 16 tokens per face, one softmax). face_image "
                "gives the aligned face crops (224 px for SD1.5, 256 px for SDXL) for a plus-face adapter."
            ),
            inputs=[
                IPAdapterType.Input("ipadapter", tooltip="A FaceID adapter (ip-adapter-faceid*) from Load IPAdapter."),
                InsightFaceType.Input("insightface", tooltip="The face models from Load InsightFace."),
                io.Image.Input("image", tooltip="One or more pictures with a face; the highest-scoring face of each is used."),
                io.ClipVision.Input(
                    "clip_vision",
                    optional=True,
                    tooltip="FaceID Plus and PlusV2 only: the ViT-H image encoder (CLIP-ViT-H-14-laion2B-s32B-b79K).",
                ),
                io.Boolean.Input(
                    "skip_images_without_face",
                    default=False,
                    optional=True,
                    tooltip="Leave pictures without a face out and use the rest (off: such a picture is an error). "
                    "A batch with no face at all is always an error.",
                ),
            ],
            outputs=[
                EmbedsType.Output(display_name="embeds", tooltip="Face embeds; connect to Apply IPAdapter."),
                io.Image.Output(
                    display_name="face_image",
                    tooltip="The aligned face crops, one per face used (in the order of the embeds), 224 px for SD1.5 "
                    "adapters and 256 px for SDXL; connect to a plus-face adapter's IPAdapter Encode.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, skip_images_without_face=None):
        return validation_result(True, packages_check)

    @classmethod
    def execute(cls, ipadapter, insightface, image, clip_vision=None, skip_images_without_face=False) -> io.NodeOutput:
        comfy.model_management.throw_exception_if_processing_interrupted()
        progress = comfy.utils.ProgressBar(image.shape[0])

        def after_image() -> None:
            progress.update(1)
            comfy.model_management.throw_exception_if_processing_interrupted()

        with errors_named_for("IPAdapter Encode Face"):
            adapter = ipadapter.adapter
            embeds, face_image = encode_faces(
                insightface, adapter.spec, adapter.source, image, clip_vision,
                skip_missing=skip_images_without_face, after_image=after_image,
            )  # fmt: skip
        return io.NodeOutput(embeds, face_image)
