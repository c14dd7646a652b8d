"""Load SigLIP Vision (pooled): ComfyUI's CLIP vision loading of a SigLIP file, keeping the file's attention-pooling
head, whose pooled output the InstantX FLUX.1-dev IP-Adapter reads (ipadapter_core/siglip_pooling.py)."""

import folder_paths
from comfy_api.latest import io

from ..ipadapter_core.siglip_pooling import SIGLIP_WITH_HEAD_FILE, check_has_pooling_head, with_pooling_head
from .errors import errors_named_for, validation_result
from .model_files import model_file_path
from .unified_loader import _load_clip_vision

FOLDER = "clip_vision"


class LoadSigLIPVision(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterSigLIPLoader",
            display_name="Load SigLIP Vision (pooled)",
            category="decoupled_ipadapter",
            description=(
                "Loads a SigLIP image encoder as Load CLIP Vision does, and keeps its attention-pooling head "
                "(vision_model.head.*), which ComfyUI drops: the InstantX FLUX.1-dev IP-Adapter reads SigLIP's pooled "
                "output. A file without the head is refused when the prompt is queued."
            ),
            inputs=[
                io.Combo.Input(
                    "clip_name",
                    options=folder_paths.get_filename_list(FOLDER),
                    tooltip=f"A SigLIP so400m file with its pooling head: {SIGLIP_WITH_HEAD_FILE}.",
                ),
            ],
            outputs=[
                io.ClipVision.Output(
                    display_name="clip_vision", tooltip="The encoder with its pooling head; connect it to Encode Image."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, clip_name=None):
        return validation_result(clip_name, lambda name: check_has_pooling_head(model_file_path(FOLDER, name)))

    @classmethod
    def execute(cls, clip_name) -> io.NodeOutput:
        with errors_named_for("Load SigLIP Vision (pooled)"):
            path = model_file_path(FOLDER, clip_name)
            return io.NodeOutput(with_pooling_head(_load_clip_vision(clip_name), path))
