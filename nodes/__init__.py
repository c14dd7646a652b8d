"""The pack's ComfyUI nodes: thin V3 classes that call ipadapter_core."""

from comfy_api.latest import ComfyExtension, io

from .apply import ApplyIPAdapter, ApplyIPAdapterAdvanced
from .clip_scores import CLIPScores
from .combine import CombineEmbeds
from .embeds_files import LoadEmbeds, SaveEmbeds
from .encode import EncodeImage
from .faceid import EncodeFace, LoadInsightFace
from .frame_weights import CombineWeights, PromptScheduleFromWeightsStrategy, Weights, WeightsFromStrategy
from .loader import LoadIPAdapter, register_model_folder
from .noise import NoiseImage
from .openclip_loader import LoadOpenCLIPModel, LoadOpenCLIPVision
from .prep_image import PrepImage
from .regions import ApplyFromParams, CombineParams, RegionalConditioning
from .siglip_loader import LoadSigLIPVision
from .tiles import Tiles
from .train import TrainIPAdapter
from .unified_loader import UnifiedLoader, UnifiedLoaderFaceID

NODES = [
    LoadIPAdapter,
    EncodeImage,
    ApplyIPAdapter,
    ApplyIPAdapterAdvanced,
    CombineEmbeds,
    LoadOpenCLIPVision,
    LoadOpenCLIPModel,
    CLIPScores,
    UnifiedLoader,
    SaveEmbeds,
    LoadEmbeds,
    LoadSigLIPVision,
    LoadInsightFace,
    EncodeFace,
    UnifiedLoaderFaceID,
    NoiseImage,
    PrepImage,
    TrainIPAdapter,
    Weights,
    WeightsFromStrategy,
    PromptScheduleFromWeightsStrategy,
    CombineWeights,
    Tiles,
    RegionalConditioning,
    CombineParams,
    ApplyFromParams,
]


class DecoupledIPAdapterExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


__all__ = ["DecoupledIPAdapterExtension", "register_model_folder"]
