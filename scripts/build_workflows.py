"""Writes the example workflows, each defined once here, in both of ComfyUI's formats.

    python scripts/build_workflows.py                     # writes workflows/*.json, workflows/api/*.json, the README table
    python scripts/build_workflows.py --check             # exit code 1 if a committed file differs from what it writes
    python scripts/build_workflows.py --refresh-node-defs # re-reads the node definitions from a live ComfyUI first

- workflows/NN_name.json: the editor format (what the graph editor saves). ComfyUI lists a pack's `workflows/*.json`
  in its template menu, so these are the pack's templates. A Markdown note on the canvas names the model files.
- workflows/api/NN_name.json: the API format (the `prompt` of POST /prompt), the very dict the front-end's
  graphToPrompt makes from the editor file (tests/test_workflows_browser.py checks that).
- workflows/README.md: the table of workflows and of the model files each needs, with where to get them; the
  model table of README.md (between its markers) lists every file of ipadapter_core/model_sources.py.
- Every loader node carries `properties.models` (file, URL, folder), which the front-end reads to offer the
  download of a missing file.

Widget order, socket types and titles come from scripts/node_defs/0.3.75.json, a snapshot of the parts of
/object_info these graphs use on the first test host. scripts/node_defs/ keeps one snapshot per tested ComfyUI
version (`--refresh-node-defs` writes the one of the server it starts on the host COMFYUI_DIR names);
tests/test_workflows.py checks the live server against its version's snapshot, and that the inputs the workflows
rely on are the same there as in the generator's. Pure Python otherwise: no ComfyUI import.
"""

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "devkit"))

import repo_paths  # noqa: E402,F401  (devkit/ and tools/ on sys.path)
import pack_import  # noqa: E402,F401  (the pack as `decoupled_ipadapter`)
from decoupled_ipadapter.ipadapter_core.model_sources import MODEL_SOURCES, ModelSource, model_source  # noqa: E402
from decoupled_ipadapter.ipadapter_core.presets import preset_named  # noqa: E402

WORKFLOWS = REPO / "workflows"
MAIN_README = REPO / "README.md"
MODEL_TABLE_START = "<!-- model table: written by scripts/build_workflows.py -->"
MODEL_TABLE_END = "<!-- end of the model table -->"
API_FOLDER = WORKFLOWS / "api"
README = WORKFLOWS / "README.md"
NODE_DEFS_FOLDER = Path(__file__).resolve().with_name("node_defs")
NODE_DEFS = NODE_DEFS_FOLDER / "0.3.75.json"  # the definitions the workflows are written from
FRONTEND_ONLY = ("MarkdownNote",)  # virtual nodes of the front-end: never sent to the server
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
EDITOR_VERSION = 0.4
COLUMN_WIDTH, NODE_WIDTH, NOTE_WIDTH, GAP = 380, 330, 420, 40


SD15 = model_source("checkpoints", "v1-5-pruned-emaonly.safetensors")
FINETUNE = model_source("checkpoints", "DreamShaper_8_pruned.safetensors")
SDXL = model_source("checkpoints", "sd_xl_base_1.0.safetensors")
VIT_H = model_source("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
IPADAPTER_SD15 = model_source("ipadapter", "ip-adapter_sd15.safetensors")
IPADAPTER_PLUS_SD15 = model_source("ipadapter", "ip-adapter-plus_sd15.safetensors")
IPADAPTER_PLUS_SDXL = model_source("ipadapter", "ip-adapter-plus_sdxl_vit-h.safetensors")
CONTROLNET_CANNY = model_source("controlnet", "control_v11p_sd15_canny.pth")
T2I_CANNY = model_source("controlnet", "t2iadapter_canny_sd15v2.pth")
FLUX_DEV = model_source("diffusion_models", "flux1-dev.safetensors")
T5XXL = model_source("text_encoders", "t5xxl_fp16.safetensors")
CLIP_L = model_source("text_encoders", "clip_l.safetensors")
FLUX_VAE = model_source("vae", "ae.safetensors")
VIT_L = model_source("clip_vision", "clip_vision_l.safetensors")
IPADAPTER_FLUX = model_source("ipadapter", "flux-ip-adapter.safetensors")
SD35_LARGE = model_source("checkpoints", "sd3.5_large.safetensors")
CLIP_G = model_source("text_encoders", "clip_g.safetensors")
SIGLIP = model_source("clip_vision", "sigclip_vision_patch14_384.safetensors")
IPADAPTER_SD35 = model_source("ipadapter", "ip-adapter.bin")
SIGLIP_WITH_HEAD = model_source("clip_vision", "siglip-so400m-patch14-384.safetensors")
IPADAPTER_FLUX_INSTANTX = model_source("ipadapter", "flux1-dev-ip-adapter-instantx.bin")
FACEID_SD15 = model_source("ipadapter", "ip-adapter-faceid_sd15.bin")
FACEID_PLUSV2_SD15 = model_source("ipadapter", "ip-adapter-faceid-plusv2_sd15.bin")
FACEID_PORTRAIT_SD15 = model_source("ipadapter", "ip-adapter-faceid-portrait-v11_sd15.bin")
FACEID_SDXL = model_source("ipadapter", "ip-adapter-faceid_sdxl.bin")
INSIGHTFACE_PACK = model_source("insightface", "buffalo_l.zip")
# The loader inputs that name a model file: (node type, input) -> models sub-folder.
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("DecoupledIPAdapterSigLIPLoader", "clip_name"): "clip_vision",
    ("DecoupledIPAdapterLoader", "ipadapter_name"): "ipadapter",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
}

REFERENCE = "ipadapter_reference.png"  # the name scripts/demo.py uploads its reference picture under
SAVED_EMBEDS = "ipadapter_reference_embeds.safetensors"  # embeds saved by IPAdapter Save Embeds, moved to input/
SECOND_REFERENCE = "ipadapter_reference_2.png"
PICTURE_TO_EDIT = "picture_to_edit.png"
FACE = "ipadapter_face.png"  # a picture with one face
SECOND_FACE = "ipadapter_face_2.png"
# Apply's FaceID inputs at their defaults (files that are not FaceID ignore them): the editor stores every widget.
# The inputs appended to Apply and Encode after the workflows were first written, at their defaults.
APPLY_APPENDED = {"faceid_v2_weight": 1.0, "lora_strength": 1.0, "unfold_batch": False}
ENCODE_APPENDED = {"weight": 1.0, "enhance_tiles": 1, "enhance_ratio": 1.0}
NEGATIVE_TEXT = "monochrome, lowres, bad anatomy, worst quality, low quality"
QUALITY_TEXT = "best quality, high quality"
TRAINING_FOLDER = "ipadapter_training"  # the input sub-folder the training workflow reads pictures and captions from


@dataclass(frozen=True)
class Output:
    node: "Node"
    slot: int


@dataclass
class Node:
    id: int
    type: str
    column: int
    title: str
    values: dict  # widget name -> value
    links: dict  # socket input name -> Output

    def __getitem__(self, slot: int) -> Output:
        return Output(self, slot)


@dataclass
class Graph:
    name: str  # file stem, e.g. "01_image_prompt"
    title: str
    summary: str  # one line for the README table
    models: tuple[ModelSource, ...]
    images: tuple[str, ...]  # the input pictures LoadImage expects
    advice: str = ""  # extra Markdown for the note
    embeds_files: tuple[str, ...] = ()  # the saved embeds IPAdapter Load Embeds expects in the input folder
    dataset_folders: tuple[str, ...] = ()  # input sub-folders of pictures with a .txt caption beside each
    nodes: list[Node] = field(default_factory=list)

    def add(self, node_type: str, column: int, *, title: str | None = None, **inputs) -> Node:
        values = {name: value for name, value in inputs.items() if not isinstance(value, (Node, Output))}
        links = {name: value if isinstance(value, Output) else value[0] for name, value in inputs.items()
                 if isinstance(value, (Node, Output))}  # fmt: skip
        node = Node(len(self.nodes) + 1, node_type, column, title or "", values, links)
        self.nodes.append(node)
        return node


# ---------------------------------------------------------------------------------------------------------------
# The graphs. Columns: 0 loaders and inputs, 1 image prompt, 2 text and latent, 3 sampling, 4 output.


def _sd15_base(graph: Graph, checkpoint: ModelSource = SD15, *, ipadapter: ModelSource = IPADAPTER_SD15, image=REFERENCE):
    """Checkpoint, image encoder, reference image, adapter, encode: the start every SD1.5 graph shares."""
    ckpt = graph.add("CheckpointLoaderSimple", 0, ckpt_name=checkpoint.name)
    vision = graph.add("CLIPVisionLoader", 0, title="Load CLIP Vision (ViT-H)", clip_name=VIT_H.name)
    adapter = graph.add("DecoupledIPAdapterLoader", 1, ipadapter_name=ipadapter.name)
    reference = graph.add("LoadImage", 0, title="Reference Image", image=image)
    embeds = _encode(graph, adapter, vision, reference)
    return ckpt, adapter, reference, embeds


def _encode(graph: Graph, adapter, vision, image, *, crop="center") -> Node:
    return graph.add("DecoupledIPAdapterEncode", 1, ipadapter=adapter, clip_vision=vision, image=image, crop=crop,
                     **ENCODE_APPENDED)


def _second_reference(graph: Graph, adapter, *, title: str) -> Node:
    """The second reference picture, encoded with the image encoder _sd15_base loaded."""
    picture = graph.add("LoadImage", 0, title=title, image=SECOND_REFERENCE)
    return _encode(graph, adapter, graph.nodes[1], picture)


def _prompts(graph: Graph, ckpt: Node, positive: str, negative: str = NEGATIVE_TEXT):
    pos = graph.add("CLIPTextEncode", 2, title="Positive Prompt", text=positive, clip=ckpt[1])
    neg = graph.add("CLIPTextEncode", 2, title="Negative Prompt", text=negative, clip=ckpt[1])
    return pos, neg


def _sample_and_save(graph: Graph, model, positive, negative, latent, vae, *, prefix: str, seed=42, steps=30,
                     cfg=7.5, sampler="ddim", scheduler="normal", denoise=1.0, column=3, title=None):  # fmt: skip
    sampler_node = graph.add(
        "KSampler", column, title=title, model=model, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
        scheduler=scheduler, positive=positive, negative=negative, latent_image=latent, denoise=denoise,
    )  # fmt: skip
    decoded = graph.add("VAEDecode", column + 1, samples=sampler_node, vae=vae)
    graph.add("SaveImage", column + 1, images=decoded, filename_prefix=prefix)


def _text_to_image(graph: Graph, ckpt, model, *, positive=QUALITY_TEXT, size=512, prefix, **sampling):
    pos, neg = _prompts(graph, ckpt, positive)
    latent = graph.add("EmptyLatentImage", 2, width=size, height=size, batch_size=1)
    _sample_and_save(graph, model, pos, neg, latent, ckpt[2], prefix=prefix, **sampling)


def _apply(graph: Graph, ckpt, adapter, embeds, *, weight, column=2, title=None) -> Node:
    return graph.add("DecoupledIPAdapterApply", column, title=title, model=ckpt[0], ipadapter=adapter, embeds=embeds,
                     weight=weight, start_at=0.0, end_at=1.0, **APPLY_APPENDED)  # fmt: skip


def image_prompt_only() -> Graph:
    graph = Graph("01_image_prompt", "Image prompt only",
                  "a variation of the reference picture; the text prompt only asks for quality",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE,),
                  "λ (`weight`) 0.7 here; 1.0 follows the reference more closely.")  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph)
    _text_to_image(graph, ckpt, _apply(graph, ckpt, adapter, embeds, weight=0.7), prefix="ipadapter_image_prompt")
    return graph


def image_and_text_prompt() -> Graph:
    graph = Graph("02_image_and_text_prompt", "Image + text prompt",
                  "the reference's look, the text's content: λ 0.5 balances the two",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE,),
                  "Lower λ (`weight`) to let the text lead, raise it to let the picture lead.")  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph)
    model = _apply(graph, ckpt, adapter, embeds, weight=0.5)
    _text_to_image(graph, ckpt, model, positive="a cat sitting on a wooden table, best quality, high quality",
                   prefix="ipadapter_image_and_text")  # fmt: skip
    return graph


def lambda_comparison() -> Graph:
    weights = (0.0, 0.5, 1.0)
    graph = Graph("03_lambda_comparison", "λ comparison",
                  "one seed, λ = 0, 0.5 and 1.0 side by side (λ = 0 is the plain model)",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE,),
                  "Three Apply nodes on the same model and embeds; each sampler has the same seed, so only λ differs.")  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph)
    pos, neg = _prompts(graph, ckpt, "a house by a lake, best quality, high quality")
    latent = graph.add("EmptyLatentImage", 2, width=512, height=512, batch_size=1)
    for index, weight in enumerate(weights):
        model = _apply(graph, ckpt, adapter, embeds, weight=weight, column=1, title=f"Apply IPAdapter (λ = {weight})")
        _sample_and_save(graph, model, pos, neg, latent, ckpt[2], prefix=f"ipadapter_lambda_{weight}",
                         column=3 + 2 * index, title=f"KSampler (λ = {weight})")  # fmt: skip
    return graph


def _with_control(graph: Graph, control_model: ModelSource, *, strength: float, prefix: str) -> Graph:
    ckpt, adapter, reference, embeds = _sd15_base(graph)
    model = _apply(graph, ckpt, adapter, embeds, weight=0.6)
    pos, neg = _prompts(graph, ckpt, QUALITY_TEXT)
    control = graph.add("ControlNetLoader", 0, control_net_name=control_model.name)
    edges = graph.add("Canny", 1, title="Canny edges", image=reference, low_threshold=0.4, high_threshold=0.8)
    applied = graph.add("ControlNetApplyAdvanced", 2, positive=pos, negative=neg, control_net=control, image=edges,
                        strength=strength, start_percent=0.0, end_percent=1.0)  # fmt: skip
    latent = graph.add("EmptyLatentImage", 2, width=512, height=512, batch_size=1)
    _sample_and_save(graph, model, applied[0], applied[1], latent, ckpt[2], prefix=prefix)
    return graph


def with_controlnet() -> Graph:
    graph = Graph("04_controlnet_canny", "With a ControlNet (canny)",
                  "the reference's edges hold the layout (ControlNet), its look comes through the image prompt",
                  (SD15, VIT_H, IPADAPTER_SD15, CONTROLNET_CANNY), (REFERENCE,),
                  "The ControlNet acts on the conditioning, the image prompt on the model: they combine freely. "
                  "The edges are taken from the reference here; load another picture into Canny for another layout.")  # fmt: skip
    return _with_control(graph, CONTROLNET_CANNY, strength=0.8, prefix="ipadapter_controlnet")


def with_t2i_adapter() -> Graph:
    graph = Graph("05_t2i_adapter_canny", "With a T2I-Adapter (canny)",
                  "as the ControlNet one, with the lighter T2I-Adapter (loaded by Load ControlNet Model)",
                  (SD15, VIT_H, IPADAPTER_SD15, T2I_CANNY), (REFERENCE,),
                  "ComfyUI loads T2I-Adapter files with **Load ControlNet Model** and applies them with Apply ControlNet.")  # fmt: skip
    return _with_control(graph, T2I_CANNY, strength=1.0, prefix="ipadapter_t2i_adapter")


def image_to_image() -> Graph:
    graph = Graph("06_image_to_image", "Image-to-image",
                  "a picture redrawn (denoise 0.6) with the reference as image prompt",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE, PICTURE_TO_EDIT),
                  "`denoise` 0.6 keeps the picture's layout; higher values change more.")  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph)
    model = _apply(graph, ckpt, adapter, embeds, weight=0.6)
    pos, neg = _prompts(graph, ckpt, QUALITY_TEXT)
    picture = graph.add("LoadImage", 0, title="Picture to redraw", image=PICTURE_TO_EDIT)
    scaled = graph.add("ImageScale", 1, image=picture, upscale_method="lanczos", width=512, height=512, crop="center")
    latent = graph.add("VAEEncode", 2, pixels=scaled, vae=ckpt[2])
    _sample_and_save(graph, model, pos, neg, latent, ckpt[2], prefix="ipadapter_img2img", denoise=0.6)
    return graph


def inpainting() -> Graph:
    graph = Graph("07_inpainting", "Inpainting",
                  "repaints the masked part of a picture after the reference (SetLatentNoiseMask)",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE, PICTURE_TO_EDIT),
                  "Paint the mask on **Picture to edit** (right click, *Open in MaskEditor*); its MASK output "
                  "(the transparent pixels) marks what is repainted.\n\n"
                  "**Set Latent Noise Mask**, not *VAE Encode (for Inpainting)*: this graph uses the ordinary SD1.5 "
                  "checkpoint, and Set Latent Noise Mask lets it start from the picture's own latent and redraw only "
                  "the masked part, at any denoise. VAE Encode (for Inpainting) blanks the masked pixels to grey and "
                  "needs denoise 1.0, which suits dedicated inpainting checkpoints (sd-v1-5-inpainting) best.")  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph)
    model = _apply(graph, ckpt, adapter, embeds, weight=0.8)
    pos, neg = _prompts(graph, ckpt, QUALITY_TEXT)
    picture = graph.add("LoadImage", 0, title="Picture to edit", image=PICTURE_TO_EDIT)
    encoded = graph.add("VAEEncode", 1, pixels=picture[0], vae=ckpt[2])
    masked = graph.add("SetLatentNoiseMask", 2, samples=encoded, mask=picture[1])
    _sample_and_save(graph, model, pos, neg, masked, ckpt[2], prefix="ipadapter_inpaint", denoise=0.9)
    return graph


def sdxl_vit_h() -> Graph:
    graph = Graph("08_sdxl_vit_h", "SDXL with a ViT-H adapter",
                  "SDXL base 1.0 at 1024×1024 with ip-adapter-plus_sdxl_vit-h (the ViT-H encoder, not bigG)",
                  (SDXL, VIT_H, IPADAPTER_PLUS_SDXL), (REFERENCE,),
                  "The `_vit-h` SDXL adapters read the same ViT-H encoder as the SD1.5 ones; plain `ip-adapter_sdxl` "
                  "needs ViT-bigG instead.")  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph, SDXL, ipadapter=IPADAPTER_PLUS_SDXL)
    model = _apply(graph, ckpt, adapter, embeds, weight=0.6)
    _text_to_image(graph, ckpt, model, size=1024, prefix="ipadapter_sdxl", cfg=6.0, sampler="dpmpp_2m",
                   scheduler="karras")  # fmt: skip
    return graph


def two_references() -> Graph:
    graph = Graph("09_two_references", "Two reference images combined",
                  "two pictures averaged into one image prompt (Combine Embeds) with ip-adapter-plus_sd15",
                  (SD15, VIT_H, IPADAPTER_PLUS_SD15), (REFERENCE, SECOND_REFERENCE),
                  "`average` blends the two; `concat` keeps both sets of tokens side by side (one softmax over them).")  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph, ipadapter=IPADAPTER_PLUS_SD15)
    second_embeds = _second_reference(graph, adapter, title="Second Reference Image")
    combined = graph.add("DecoupledIPAdapterCombineEmbeds", 1, embeds_1=embeds, embeds_2=second_embeds, method="average")
    _text_to_image(graph, ckpt, _apply(graph, ckpt, adapter, combined, weight=0.7), prefix="ipadapter_two_references")
    return graph


def fine_tuned_checkpoint() -> Graph:
    graph = Graph("10_fine_tuned_checkpoint", "Same adapter, a fine-tuned SD1.5 checkpoint",
                  "ip-adapter_sd15 on DreamShaper 8: adapters trained on SD1.5 work on its fine-tunes",
                  (FINETUNE, VIT_H, IPADAPTER_SD15), (REFERENCE,),
                  "Swap in any SD1.5 fine-tune in Load Checkpoint; the adapter file stays the same.")  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph, FINETUNE)
    model = _apply(graph, ckpt, adapter, embeds, weight=0.7)
    _text_to_image(graph, ckpt, model, positive="a portrait, best quality, high quality", prefix="ipadapter_finetune",
                   cfg=7.0, sampler="dpmpp_2m", scheduler="karras", steps=25)  # fmt: skip
    return graph


def unified_loader() -> Graph:
    graph = Graph("11_unified_loader", "Unified loader",
                  "one node finds the adapter and its image encoder by preset (SD1.5 standard here) and loads both",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE,),
                  "**IPAdapter Unified Loader** looks in `models/ipadapter` and `models/clip_vision` for the preset's "
                  "files under their official names or the usual renames (any case, `-`/`_` alike, `.safetensors` "
                  "or `.bin`, any subfolder; the encoder also as `CLIP-ViT-H-14.safetensors` or "
                  "`SD1.5/model.safetensors`). A missing file is reported when you queue, with its folder and its "
                  "download link. `crop` = `pad` on Encode keeps the whole reference when it is not square.")  # fmt: skip
    ckpt = graph.add("CheckpointLoaderSimple", 0, ckpt_name=SD15.name)
    loader = graph.add("DecoupledIPAdapterUnifiedLoader", 1, preset="SD1.5 standard")
    reference = graph.add("LoadImage", 0, title="Reference Image", image=REFERENCE)
    embeds = _encode(graph, loader[0], loader[1], reference, crop="pad")
    model = _apply(graph, ckpt, loader[0], embeds, weight=0.7)
    _text_to_image(graph, ckpt, model, prefix="ipadapter_unified_loader")
    return graph


def save_and_load_embeds() -> Graph:
    graph = Graph("12_save_and_load_embeds", "Save and load embeds",
                  "the reference encoded once and saved (Save Embeds); saved embeds loaded and applied (Load Embeds)",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE,),
                  "**1. Save.** Encode Image → **IPAdapter Save Embeds** writes "
                  "`output/ipadapter_embeds/reference_00001_.safetensors` (the counter grows). Until a saved file is "
                  "in `input/`, ComfyUI runs the saving and refuses the loading branch, naming the missing file; mute "
                  "that branch's Save Image (select it, Ctrl+M) to leave it out.\n\n"
                  "**2. Load.** Move the file to ComfyUI's `input/` folder (here it is named "
                  f"`{SAVED_EMBEDS}`), pick it in **IPAdapter Load Embeds**, un-mute Save Image and mute Save Embeds "
                  "instead: ComfyUI then runs only what Save Image needs, so the reference is not encoded again and no "
                  "image encoder is loaded. The file keeps the embeds bit for bit and the adapter they were made for; "
                  "Apply refuses an adapter they do not fit.", embeds_files=(SAVED_EMBEDS,))  # fmt: skip
    ckpt, adapter, _, embeds = _sd15_base(graph)
    graph.add("DecoupledIPAdapterSaveEmbeds", 2, embeds=embeds, filename_prefix="ipadapter_embeds/reference")
    saved = graph.add("DecoupledIPAdapterLoadEmbeds", 1, embeds_file=SAVED_EMBEDS)
    model = _apply(graph, ckpt, adapter, saved, weight=0.7)
    _text_to_image(graph, ckpt, model, prefix="ipadapter_saved_embeds")
    return graph


def _apply_advanced(graph: Graph, model, adapter, embeds, *, weight, weight_type, composition_weight=1.0,
                    block_weights="", embeds_scaling="V only", **links) -> Node:
    """Apply IPAdapter (advanced); `links`: its optional sockets (attn_mask, composition_embeds)."""
    return graph.add("DecoupledIPAdapterApplyAdvanced", 2, model=model, ipadapter=adapter, embeds=embeds,
                     weight=weight, start_at=0.0, end_at=1.0, weight_type=weight_type, embeds_scaling=embeds_scaling,
                     block_weights=block_weights, composition_weight=composition_weight, **APPLY_APPENDED,
                     **links)  # fmt: skip


def _sdxl_text_to_image(graph: Graph, ckpt, model, *, positive: str, prefix: str) -> None:
    _text_to_image(graph, ckpt, model, positive=positive, size=1024, prefix=prefix, cfg=6.0, sampler="dpmpp_2m",
                   scheduler="karras")  # fmt: skip


# InstantStyle's style module, up_blocks.0.attentions.1 of SDXL, as block_weights: diffusers' scale dict, the index
STYLE_BLOCK_WEIGHTS = ('{"up": {"block_0": [0.0, 1.0, 0.0]}}', "6:1.0")


def sdxl_style_transfer() -> Graph:
    graph = Graph("13_sdxl_style_transfer", "SDXL style transfer",
                  "the reference's style, the text's content: weight_type `style transfer` feeds the image prompt "
                  "to SDXL's style layer only (InstantStyle)",
                  (SDXL, VIT_H, IPADAPTER_PLUS_SDXL), (REFERENCE,),
                  "**Apply IPAdapter (advanced)**, `weight_type` = `style transfer`: only one cross-attention module "
                  "reads the image prompt, SDXL's `up_blocks.0.attentions.1` (transformer index 6), the one "
                  "InstantStyle found to carry style (colour, material, atmosphere). Every other layer is the plain model, "
                  "so the picture's content comes from the text. The same map written by hand: `block_weights` "
                  f"`{STYLE_BLOCK_WEIGHTS[0]}` (diffusers' scale dict) or `{STYLE_BLOCK_WEIGHTS[1]}` (the index), with weight_type "
                  "`linear`. Raise `weight` for more style; `strong style transfer` gives every "
                  "layer but the composition one (index 3) the image prompt, which brings some of the reference's "
                  "content back.")  # fmt: skip
    ckpt, adapter, reference, embeds = _sd15_base(graph, SDXL, ipadapter=IPADAPTER_PLUS_SDXL)
    reference.title = "Style Reference"
    model = _apply_advanced(graph, ckpt[0], adapter, embeds, weight=1.0, weight_type="style transfer")
    _sdxl_text_to_image(graph, ckpt, model, positive="a cat sitting on a wooden table, best quality, high quality",
                        prefix="ipadapter_sdxl_style")  # fmt: skip
    return graph


def sdxl_style_and_composition() -> Graph:
    graph = Graph("14_sdxl_style_and_composition", "SDXL style and composition",
                  "one reference gives the style, another the composition (layout): weight_type "
                  "`style and composition`, composition_weight for the second",
                  (SDXL, VIT_H, IPADAPTER_PLUS_SDXL), (REFERENCE, SECOND_REFERENCE),
                  "**Apply IPAdapter (advanced)**, `weight_type` = `style and composition`: SDXL's style module "
                  "(`up_blocks.0.attentions.1`, index 6) reads `embeds` (the style reference) at `weight`; its "
                  "composition module (`down_blocks.2.attentions.1`, index 3) reads `composition_embeds` (the "
                  "composition reference) at `composition_weight`; no other layer reads an image. Without "
                  "composition_embeds both modules read the one reference. Lower `composition_weight` to loosen the "
                  "layout, raise `weight` for more style.")  # fmt: skip
    ckpt, adapter, reference, style = _sd15_base(graph, SDXL, ipadapter=IPADAPTER_PLUS_SDXL)
    reference.title = "Style Reference"
    composition = _second_reference(graph, adapter, title="Composition Reference")
    model = _apply_advanced(graph, ckpt[0], adapter, style, weight=1.0, weight_type="style and composition",
                            composition_weight=0.8, composition_embeds=composition)  # fmt: skip
    _sdxl_text_to_image(graph, ckpt, model, positive="best quality, high quality", prefix="ipadapter_sdxl_style_composition")
    return graph


def _half_masks(graph: Graph, *, size=512) -> tuple[Node, Node]:
    """(left, right): masks of the picture's left and right halves, from core mask nodes."""
    empty = graph.add("SolidMask", 0, title="Empty mask", value=0.0, width=size, height=size)
    half = graph.add("SolidMask", 0, title="Half-width mask", value=1.0, width=size // 2, height=size)
    left = graph.add("MaskComposite", 1, title="Left half", destination=empty, source=half, x=0, y=0, operation="add")
    right = graph.add("InvertMask", 1, title="Right half", mask=left)
    return left, right


def regional_two_references() -> Graph:
    graph = Graph("15_regional_two_references", "Two references, one per half of the picture",
                  "each reference acts in its own region: two Apply IPAdapter nodes, chained, each with an "
                  "attn_mask (left half, right half)",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE, SECOND_REFERENCE),
                  "The masks come from core nodes: **Create Solid Mask** (0 everywhere) plus a half-width one (1) "
                  "make the left half (**Combine Masks**, add), **Invert Mask** the right. A mask is resized to each "
                  "layer's grid, so only its shape counts; keep its aspect that of the picture. Paint your own "
                  "regions instead (Load Image's mask, MaskEditor), soft edges allowed. The two Apply nodes are "
                  "chained: each adds its own image prompt where its mask is 1; the text prompt acts everywhere.")  # fmt: skip
    ckpt, adapter, reference, left_embeds = _sd15_base(graph)
    reference.title = "Left Reference"
    right_embeds = _second_reference(graph, adapter, title="Right Reference")
    left, right = _half_masks(graph)
    model = ckpt[0]
    for side, embeds, mask in (("left", left_embeds, left), ("right", right_embeds, right)):
        model = graph.add("DecoupledIPAdapterApply", 2, title=f"Apply IPAdapter ({side} half)", model=model,
                          ipadapter=adapter, embeds=embeds, weight=0.7, start_at=0.0, end_at=1.0,
                          attn_mask=mask, **APPLY_APPENDED)[0]  # fmt: skip
    _text_to_image(graph, ckpt, model, positive="two animals side by side in a meadow, best quality, high quality",
                   prefix="ipadapter_regional")  # fmt: skip
    return graph


def _dit_image_prompt(graph: Graph, model, *, encoder: ModelSource, encoder_title: str, ipadapter: ModelSource,
                      weight: float, encoder_loader: str = "CLIPVisionLoader") -> Node:  # fmt: skip
    """Image encoder, reference image, adapter, encode and Apply on `model`: the image prompt of the DiT graphs."""
    loader_title = "Load SigLIP Vision (pooled)" if encoder_loader == "DecoupledIPAdapterSigLIPLoader" else "Load CLIP Vision"
    vision = graph.add(encoder_loader, 0, title=f"{loader_title} ({encoder_title})", clip_name=encoder.name)
    reference = graph.add("LoadImage", 0, title="Reference Image", image=REFERENCE)
    adapter = graph.add("DecoupledIPAdapterLoader", 1, ipadapter_name=ipadapter.name)
    embeds = _encode(graph, adapter, vision, reference)
    return graph.add("DecoupledIPAdapterApply", 2, model=model, ipadapter=adapter, embeds=embeds, weight=weight,
                     start_at=0.0, end_at=1.0, **APPLY_APPENDED)  # fmt: skip


def flux_xlabs() -> Graph:
    graph = Graph("16_flux_xlabs", "FLUX.1-dev with the XLabs IP-Adapter",
                  "FLUX.1-dev guided by the reference through XLabs' Flux IP-Adapter (CLIP ViT-L/14), λ 0.7, cfg 1",
                  (FLUX_DEV, T5XXL, CLIP_L, FLUX_VAE, VIT_L, IPADAPTER_FLUX), (REFERENCE,),
                  "Flux runs at cfg 1 with its guidance in **FluxGuidance** (3.5): the negative prompt is not used. "
                  "Apply IPAdapter patches FLUX.1's 19 double blocks. XLabs' v2 file (also named "
                  "`ip_adapter.safetensors`, in XLabs-AI/flux-ip-adapter-v2) loads the same way: save it under "
                  "another name, e.g. `flux-ip-adapter-v2.safetensors`, and pick it in Load IPAdapter. Encode Image "
                  "needs CLIP ViT-L/14 (another encoder is refused with a message).")  # fmt: skip
    unet = graph.add("UNETLoader", 0, unet_name=FLUX_DEV.name, weight_dtype="default")
    text = graph.add("DualCLIPLoader", 0, title="Load Text Encoders (T5-XXL + CLIP-L)", clip_name1=T5XXL.name,
                     clip_name2=CLIP_L.name, type="flux", device="default")  # fmt: skip
    vae = graph.add("VAELoader", 0, vae_name=FLUX_VAE.name)
    model = _dit_image_prompt(graph, unet, encoder=VIT_L, encoder_title="ViT-L/14", ipadapter=IPADAPTER_FLUX, weight=0.7)
    pos = graph.add("CLIPTextEncode", 2, title="Positive Prompt", text="a photograph of a cat in a garden", clip=text)
    neg = graph.add("CLIPTextEncode", 2, title="Negative Prompt (unused at cfg 1)", text="", clip=text)
    guided = graph.add("FluxGuidance", 2, conditioning=pos, guidance=3.5)
    latent = graph.add("EmptySD3LatentImage", 2, width=1024, height=1024, batch_size=1)
    _sample_and_save(graph, model, guided, neg, latent, vae, prefix="ipadapter_flux", steps=20, cfg=1.0,
                     sampler="euler", scheduler="simple")  # fmt: skip
    return graph


def sd35_instantx() -> Graph:
    graph = Graph("17_sd35_instantx", "SD3.5 Large with the InstantX IP-Adapter",
                  "SD3.5 Large guided by the reference through InstantX's SD3.5 IP-Adapter (SigLIP so400m), λ 0.5",
                  (SD35_LARGE, CLIP_L, CLIP_G, T5XXL, SIGLIP, IPADAPTER_SD35), (REFERENCE,),
                  "The checkpoint holds the MMDiT and the VAE; **TripleCLIPLoader** loads SD3.5's three text "
                  "encoders (the same clip_l and t5xxl files as Flux). Apply IPAdapter patches SD3.5 Large's 38 "
                  "joint blocks; the adapter's resampler reads the sampler's timestep at every step. λ 0.5 and cfg "
                  "5 are InstantX's suggested settings. Encode Image needs SigLIP so400m (another encoder is refused "
                  "with a message); the unconditional pass gets zero image embeds, as in InstantX's reference.")  # fmt: skip
    ckpt = graph.add("CheckpointLoaderSimple", 0, ckpt_name=SD35_LARGE.name)
    text = graph.add("TripleCLIPLoader", 0, title="Load Text Encoders (CLIP-L + CLIP-G + T5-XXL)",
                     clip_name1=CLIP_L.name, clip_name2=CLIP_G.name, clip_name3=T5XXL.name)  # fmt: skip
    model = _dit_image_prompt(graph, ckpt[0], encoder=SIGLIP, encoder_title="SigLIP so400m", ipadapter=IPADAPTER_SD35,
                              weight=0.5)  # fmt: skip
    pos = graph.add("CLIPTextEncode", 2, title="Positive Prompt", text="a photograph of a cat in a garden", clip=text)
    neg = graph.add("CLIPTextEncode", 2, title="Negative Prompt", text=NEGATIVE_TEXT, clip=text)
    latent = graph.add("EmptySD3LatentImage", 2, width=1024, height=1024, batch_size=1)
    _sample_and_save(graph, model, pos, neg, latent, ckpt[2], prefix="ipadapter_sd35", steps=24, cfg=5.0,
                     sampler="euler", scheduler="sgm_uniform")  # fmt: skip
    return graph


def _faceid_advice() -> str:
    """The note's FaceID part: the optional packages (FACEID_PIP) and the InsightFace pack from the model table."""
    from decoupled_ipadapter.ipadapter_core.face_analysis import FACEID_PIP

    return (
        f"FaceID needs the optional packages: `{FACEID_PIP}` in ComfyUI's Python. **InsightFace's buffalo_l pack**: "
        f"{_where_to_get(INSIGHTFACE_PACK)}. Each picture's highest-scoring face is used; `lora_strength` is the LoRA "
        "inside the FaceID file (1 as in the reference), put on once per file."
    )


def _face_prompt(graph: Graph, adapter_source: ModelSource, *, faces=(FACE,), vision=None) -> tuple[Node, Node]:
    """Load IPAdapter (a FaceID file), Load InsightFace, and Encode Face of each face picture; several pictures are
    concatenated into one image prompt (Combine Embeds, concat: their tokens side by side, as one batch would be)."""
    adapter = graph.add("DecoupledIPAdapterLoader", 1, ipadapter_name=adapter_source.name)
    insightface = graph.add("DecoupledIPAdapterInsightFaceLoader", 0, model_name="buffalo_l", provider="CPU")
    links = {"clip_vision": vision} if vision is not None else {}
    encoded = []
    for index, face in enumerate(faces):
        picture = graph.add("LoadImage", 0, title=f"Face {index + 1}" if len(faces) > 1 else "Face", image=face)
        encoded.append(graph.add("DecoupledIPAdapterEncodeFace", 1, ipadapter=adapter, insightface=insightface,
                                 image=picture[0], skip_images_without_face=False, **links))  # fmt: skip
    if len(encoded) == 1:
        return adapter, encoded[0]
    sockets = {f"embeds_{index + 1}": embeds for index, embeds in enumerate(encoded)}
    return adapter, graph.add("DecoupledIPAdapterCombineEmbeds", 1, method="concat", **sockets)


def _apply_face(graph: Graph, model, adapter, embeds, *, weight, faceid_v2_weight=1.0, title=None) -> Node:
    return graph.add("DecoupledIPAdapterApply", 2, title=title, model=model, ipadapter=adapter, embeds=embeds,
                     weight=weight, start_at=0.0, end_at=1.0, faceid_v2_weight=faceid_v2_weight, lora_strength=1.0,
                     unfold_batch=False)  # fmt: skip


PORTRAIT_TEXT = "a portrait photo of a person in a garden, soft light, best quality, high quality"


def faceid_sd15() -> Graph:
    graph = Graph("18_faceid", "FaceID",
                  "a person's face as the image prompt: ip-adapter-faceid_sd15 (with its LoRA) and InsightFace",
                  (SD15, FACEID_SD15), (FACE,), _faceid_advice())  # fmt: skip
    ckpt = graph.add("CheckpointLoaderSimple", 0, ckpt_name=SD15.name)
    adapter, embeds = _face_prompt(graph, FACEID_SD15)
    model = _apply_face(graph, ckpt[0], adapter, embeds, weight=0.8)
    _text_to_image(graph, ckpt, model[0], positive=PORTRAIT_TEXT, prefix="ipadapter_faceid")
    return graph


def faceid_plusv2_with_image_prompt() -> Graph:
    graph = Graph("19_faceid_plusv2_and_image_prompt", "FaceID Plus V2 beside a plain IP-Adapter",
                  "the face from FaceID Plus V2 (s = faceid_v2_weight), the look from ip-adapter_sd15, on one model",
                  (SD15, VIT_H, FACEID_PLUSV2_SD15, IPADAPTER_SD15), (FACE, REFERENCE),
                  _faceid_advice() + " Plus V2 also reads the face crop with the ViT-H encoder. The two Apply nodes are "
                  "chained: each adds its own image prompt.")  # fmt: skip
    ckpt, plain, _, style = _sd15_base(graph)
    adapter, embeds = _face_prompt(graph, FACEID_PLUSV2_SD15, vision=graph.nodes[1])
    face_model = _apply_face(graph, ckpt[0], adapter, embeds, weight=0.8, faceid_v2_weight=1.0, title="Apply FaceID Plus V2")
    model = graph.add("DecoupledIPAdapterApply", 2, title="Apply IPAdapter (look)", model=face_model[0],
                      ipadapter=plain, embeds=style, weight=0.4, start_at=0.0, end_at=1.0, **APPLY_APPENDED)  # fmt: skip
    _text_to_image(graph, ckpt, model[0], positive=PORTRAIT_TEXT, prefix="ipadapter_faceid_plusv2")
    return graph


def faceid_portrait() -> Graph:
    graph = Graph("20_faceid_portrait", "FaceID Portrait from several pictures",
                  "ip-adapter-faceid-portrait-v11_sd15 with two pictures of one face: 16 tokens per face, one prompt",
                  (SD15, FACEID_PORTRAIT_SD15), (FACE, SECOND_FACE),
                  _faceid_advice() + " Portrait files carry no LoRA. More pictures: more Encode Face nodes into "
                  "Combine Embeds (concat), or one batch into one Encode Face, where `skip_images_without_face` leaves "
                  "out pictures without a face.")  # fmt: skip
    ckpt = graph.add("CheckpointLoaderSimple", 0, ckpt_name=SD15.name)
    adapter, embeds = _face_prompt(graph, FACEID_PORTRAIT_SD15, faces=(FACE, SECOND_FACE))
    model = _apply_face(graph, ckpt[0], adapter, embeds, weight=0.8)
    _text_to_image(graph, ckpt, model[0], positive=PORTRAIT_TEXT, prefix="ipadapter_faceid_portrait")
    return graph


def faceid_sdxl() -> Graph:
    graph = Graph("21_faceid_sdxl", "SDXL FaceID",
                  "SDXL base 1.0 at 1024×1024 with ip-adapter-faceid_sdxl (and its LoRA) and InsightFace",
                  (SDXL, FACEID_SDXL), (FACE,), _faceid_advice())  # fmt: skip
    ckpt = graph.add("CheckpointLoaderSimple", 0, ckpt_name=SDXL.name)
    adapter, embeds = _face_prompt(graph, FACEID_SDXL)
    model = _apply_face(graph, ckpt[0], adapter, embeds, weight=0.8)
    _sdxl_text_to_image(graph, ckpt, model[0], positive=PORTRAIT_TEXT, prefix="ipadapter_faceid_sdxl")
    return graph


def flux_instantx() -> Graph:
    graph = Graph("22_flux_instantx", "FLUX.1-dev with the InstantX IP-Adapter",
                  "FLUX.1-dev guided by the reference through InstantX's FLUX.1-dev IP-Adapter (SigLIP so400m, pooled), "
                  "λ 0.6, cfg 1",
                  (FLUX_DEV, T5XXL, CLIP_L, FLUX_VAE, SIGLIP_WITH_HEAD, IPADAPTER_FLUX_INSTANTX), (REFERENCE,),
                  "Apply IPAdapter patches FLUX.1's 19 double and 38 single blocks, inside their attention. The "
                  "adapter reads SigLIP's pooled output: **Load SigLIP Vision (pooled)** keeps the file's pooling "
                  "head, which Load CLIP Vision drops (google's `model.safetensors`; Comfy-Org's "
                  "sigclip_vision_patch14_384.safetensors has no head and is refused when the prompt is queued). "
                  "Encode Image resizes the whole reference to 384², and every batch row gets its tokens, as in "
                  "InstantX's reference (FLUX.1-dev runs no unconditional pass). λ 0.6 is in InstantX's suggested "
                  "range.")  # fmt: skip
    unet = graph.add("UNETLoader", 0, unet_name=FLUX_DEV.name, weight_dtype="default")
    text = graph.add("DualCLIPLoader", 0, title="Load Text Encoders (T5-XXL + CLIP-L)", clip_name1=T5XXL.name,
                     clip_name2=CLIP_L.name, type="flux", device="default")  # fmt: skip
    vae = graph.add("VAELoader", 0, vae_name=FLUX_VAE.name)
    model = _dit_image_prompt(graph, unet, encoder=SIGLIP_WITH_HEAD, encoder_title="SigLIP so400m",
                              ipadapter=IPADAPTER_FLUX_INSTANTX, weight=0.6,
                              encoder_loader="DecoupledIPAdapterSigLIPLoader")  # fmt: skip
    pos = graph.add("CLIPTextEncode", 2, title="Positive Prompt", text="a photograph of a cat in a garden", clip=text)
    neg = graph.add("CLIPTextEncode", 2, title="Negative Prompt (unused at cfg 1)", text="", clip=text)
    guided = graph.add("FluxGuidance", 2, conditioning=pos, guidance=3.5)
    latent = graph.add("EmptySD3LatentImage", 2, width=1024, height=1024, batch_size=1)
    _sample_and_save(graph, model, guided, neg, latent, vae, prefix="ipadapter_flux_instantx", steps=24, cfg=1.0,
                     sampler="euler", scheduler="simple")  # fmt: skip
    return graph


def fine_tune_on_a_folder() -> Graph:
    graph = Graph("23_fine_tune_ip_adapter_sd15", "Fine-tune ip-adapter_sd15 on a folder",
                  "ip-adapter_sd15 trained further on your own pictures and captions (Train IPAdapter), saved to "
                  "models/ipadapter and applied in the same graph",
                  (SD15, VIT_H, IPADAPTER_SD15), (REFERENCE,),
                  f"Put the pictures in `ComfyUI/input/{TRAINING_FOLDER}/`, each with a caption in a `.txt` file of "
                  "the same name (`cat.png`, `cat.txt`). They are resized and cropped to 512x512. **Train IPAdapter** "
                  "keeps the checkpoint and both encoders frozen and trains the adapter's projection and K'/V' "
                  "(AdamW, lr 1e-4); the loss curve shows in the preview. It saves "
                  "`models/ipadapter/ip-adapter_sd15_finetuned.safetensors` (official format) and a `.training` "
                  "file beside it: load the saved file in Load IPAdapter and queue again with the same settings "
                  "to continue. Disconnect Load IPAdapter to train a new adapter instead.",
                  dataset_folders=(TRAINING_FOLDER,))  # fmt: skip
    ckpt = graph.add("CheckpointLoaderSimple", 0, ckpt_name=SD15.name)
    vision = graph.add("CLIPVisionLoader", 0, title="Load CLIP Vision (ViT-H)", clip_name=VIT_H.name)
    start = graph.add("DecoupledIPAdapterLoader", 0, title="Adapter to Fine-tune", ipadapter_name=IPADAPTER_SD15.name)
    dataset = graph.add("LoadImageTextDataSetFromFolder", 0, title="Training Pictures and Captions", folder=TRAINING_FOLDER)
    resized = graph.add("ResizeImagesByShorterEdge", 1, images=dataset[0], shorter_edge=512)
    cropped = graph.add("CenterCropImages", 1, images=resized, width=512, height=512)
    trained = graph.add(
        "DecoupledIPAdapterTrain", 2, model=ckpt[0], clip=ckpt[1], clip_vision=vision, vae=ckpt[2], images=cropped,
        captions=dataset[1], steps=2000, batch_size=4, learning_rate=1e-4, seed=0, adapter_kind="ip-adapter",
        filename="ip-adapter_sd15_finetuned.safetensors", ipadapter=start, weight_decay=0.01, training_dtype="auto",
        gradient_checkpointing=False,
    )  # fmt: skip
    graph.add("PreviewImage", 3, title="Loss Curve", images=trained[1])
    reference = graph.add("LoadImage", 1, title="Reference Image", image=REFERENCE)
    embeds = _encode(graph, trained[0], vision, reference)
    model = _apply(graph, ckpt, trained[0], embeds, weight=0.7, column=3)
    _text_to_image(graph, ckpt, model, prefix="ipadapter_fine_tuned")
    return graph


GRAPHS = (image_prompt_only, image_and_text_prompt, lambda_comparison, with_controlnet, with_t2i_adapter,
          image_to_image, inpainting, sdxl_vit_h, two_references, fine_tuned_checkpoint, unified_loader,
          save_and_load_embeds, sdxl_style_transfer, sdxl_style_and_composition, regional_two_references,
          flux_xlabs, sd35_instantx, faceid_sd15, faceid_plusv2_with_image_prompt, faceid_portrait, faceid_sdxl,
          flux_instantx, fine_tune_on_a_folder)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The two formats.


def node_defs_path(comfyui_version: str) -> Path:
    """The snapshot of a ComfyUI version's definitions of the nodes the workflows use."""
    return NODE_DEFS_FOLDER / f"{comfyui_version}.json"


def load_node_defs(path: Path = NODE_DEFS) -> dict:
    return json.loads(path.read_text())


def node_def_subset(object_info: dict, node_types) -> dict:
    """What the writers need of /object_info for `node_types`: title, inputs in order (socket or widget, the
    extra widget values the front-end keeps), outputs."""
    subset = {}
    for node_type in sorted(node_types):
        if node_type not in object_info:
            raise KeyError(f"/object_info has no node {node_type!r}: is the pack (or ComfyUI's node) loaded?")
        info = object_info[node_type]
        inputs = []
        for group in ("required", "optional"):
            for name in info.get("input_order", {}).get(group, []):
                kind, options = (info["input"][group][name] + [{}])[:2]
                widget = isinstance(kind, list) or (kind in WIDGET_TYPES and not options.get("forceInput"))
                inputs.append({
                    "name": name, "type": "COMBO" if isinstance(kind, list) else kind, "widget": widget,
                    "optional": group == "optional",
                    "extra_widgets": ["control_after_generate"] * bool(options.get("control_after_generate"))
                    + ["upload"] * bool(options.get("image_upload")),
                })  # fmt: skip
        outputs = [{"name": name, "type": kind} for name, kind in zip(info["output_name"], info["output"])]
        subset[node_type] = {"title": info.get("display_name") or node_type, "inputs": inputs, "outputs": outputs}
    return subset


# The values the front-end stores for the extra widgets (a fixed seed keeps the saved prompt reproducible).
EXTRA_WIDGET_VALUES = {"control_after_generate": "fixed", "upload": "image"}


def _title(node: Node, defs: dict) -> str:
    return node.title or defs[node.type]["title"]


def _check_inputs(graph: Graph, node: Node, definition: dict) -> None:
    known = {spec["name"] for spec in definition["inputs"]}
    unknown = (set(node.values) | set(node.links)) - known
    if unknown:
        raise ValueError(f"{graph.name}: node {node.id} ({node.type}) has no input(s) {sorted(unknown)}")
    for spec in definition["inputs"]:
        given = node.links if not spec["widget"] else node.values
        # the editor stores every widget's value, optional ones included (the front-end sends them all)
        if (spec["widget"] or not spec["optional"]) and spec["name"] not in given:
            raise ValueError(f"{graph.name}: node {node.id} ({node.type}) needs its input {spec['name']!r}")


def api_format(graph: Graph, defs: dict) -> dict:
    prompt = {}
    for node in graph.nodes:
        definition = defs[node.type]
        _check_inputs(graph, node, definition)
        inputs = {}
        for spec in definition["inputs"]:
            name = spec["name"]
            if name in node.values:
                inputs[name] = node.values[name]
            elif name in node.links:
                inputs[name] = [str(node.links[name].node.id), node.links[name].slot]
        prompt[str(node.id)] = {"inputs": inputs, "class_type": node.type, "_meta": {"title": _title(node, defs)}}
    return prompt


def _execution_order(graph: Graph) -> dict[int, int]:
    """Node id -> position in a topological order (the editor's `order`), notes first."""
    done: dict[int, int] = {}

    def visit(node: Node) -> None:
        if node.id not in done:
            for source in node.links.values():
                visit(source.node)
            done[node.id] = len(done)

    for node in graph.nodes:
        visit(node)
    return done


def _where_to_get(model: ModelSource) -> str:
    """Markdown: the file's download link and origin, and the name to save it under when it is published as another."""
    text = f"[download]({model.url}) from {model.origin}"
    if model.renamed_from:
        text += f"; it downloads as `{model.renamed_from}`: save it as `{model.name}`"
    return text


def _model_entry(source: ModelSource) -> dict:
    return {"name": source.name, "url": source.url, "directory": source.folder}


def loader_models(graph: Graph, node: Node) -> list[dict]:
    """The front-end's `properties.models` of a loader node: the file its widget names (the Unified Loader: its
    preset's adapter and encoder), its URL and folder, as ComfyUI's own templates do; [] for other nodes."""
    if node.type == "DecoupledIPAdapterUnifiedLoader":
        preset = preset_named(node.values["preset"])
        return [_model_entry(file.source) for file in (preset.adapter, preset.encoder)]
    return [
        _model_entry(model_source(folder, node.values[name]))
        for (node_type, name), folder in MODEL_INPUTS.items()
        if node.type == node_type and name in node.values
    ]


def _unnamed_models(graph: Graph) -> list[dict]:
    """The entries no widget names (a preset's files): the front-end checks a node's `properties.models` only for
    the files its widgets show, so these are listed for the whole workflow too (its top-level `models`)."""
    return [entry for node in graph.nodes for entry in loader_models(graph, node) if entry["name"] not in node.values.values()]


def _check_models(graph: Graph) -> None:
    named = {(entry["directory"], entry["name"]) for node in graph.nodes for entry in loader_models(graph, node)}
    declared = {(model.folder, model.name) for model in graph.models}
    if named != declared:
        raise ValueError(f"{graph.name}: its loaders name {sorted(named)} but its note lists {sorted(declared)}")


def _note_text(graph: Graph) -> str:
    lines = [f"## {graph.title}", "", graph.summary[0].upper() + graph.summary[1:] + ".", "", "**Model files**", ""]
    lines += [f"- `models/{model.folder}/{model.name}`: {_where_to_get(model)}" for model in graph.models]
    lines += ["", "**Input pictures** (put them in ComfyUI's `input/` folder or pick your own): "
              + ", ".join(f"`{name}`" for name in graph.images)]  # fmt: skip
    if graph.embeds_files:
        lines += ["", "**Saved embeds** (in ComfyUI's `input/` folder): "
                  + ", ".join(f"`{name}`" for name in graph.embeds_files)]  # fmt: skip
    if graph.advice:
        lines += ["", graph.advice]
    return "\n".join(lines)


def _node_height(inputs: int, outputs: int, widgets: int) -> int:
    return 30 + 22 * max(inputs, outputs) + 26 * widgets


def _models_property(graph: Graph, node: Node) -> dict:
    models = loader_models(graph, node)
    return {"models": models} if models else {}


def editor_format(graph: Graph, defs: dict) -> dict:
    """The editor's saved JSON (LiteGraph serialisation, version 0.4), laid out in columns, with a note first."""
    _check_models(graph)
    order = _execution_order(graph)
    consumers: dict[tuple[int, int], list[int]] = {}
    links, nodes = [], []
    column_heights: dict[int, int] = {}
    link_rows = []
    for node in graph.nodes:
        socket_specs = [spec for spec in defs[node.type]["inputs"] if not spec["widget"]]
        for slot, spec in enumerate(socket_specs):
            if spec["name"] in node.links:
                source = node.links[spec["name"]]
                link_id = len(link_rows) + 1
                kind = defs[source.node.type]["outputs"][source.slot]["type"]
                link_rows.append([link_id, source.node.id, source.slot, node.id, slot, kind])
                consumers.setdefault((source.node.id, source.slot), []).append(link_id)
    links = link_rows
    note_id = len(graph.nodes) + 1
    note_height = 320
    nodes.append({
        "id": note_id, "type": "MarkdownNote", "pos": [40, 40], "size": [NOTE_WIDTH, note_height], "flags": {},
        "order": 0, "mode": 0, "inputs": [], "outputs": [], "title": "Model files", "properties": {},
        "widgets_values": [_note_text(graph)], "color": "#432", "bgcolor": "#653",
    })  # fmt: skip
    column_heights[0] = 40 + note_height + GAP
    for node in graph.nodes:
        definition = defs[node.type]
        socket_specs = [spec for spec in definition["inputs"] if not spec["widget"]]
        widget_values = []
        for spec in definition["inputs"]:
            if spec["widget"]:
                widget_values.append(node.values[spec["name"]])
                widget_values += [EXTRA_WIDGET_VALUES[extra] for extra in spec["extra_widgets"]]
        inputs = [{
            "name": spec["name"], "type": spec["type"],
            "link": next((row[0] for row in link_rows if row[3] == node.id and row[4] == slot), None),
        } for slot, spec in enumerate(socket_specs)]  # fmt: skip
        outputs = [{
            "name": spec["name"], "type": spec["type"], "links": consumers.get((node.id, slot), []),
        } for slot, spec in enumerate(definition["outputs"])]  # fmt: skip
        height = _node_height(len(inputs), len(outputs), len(widget_values))
        if node.type == "LoadImage":
            height += 280  # the picture preview
        elif node.type == "CLIPTextEncode":
            height += 60  # a multi-line text box
        y = column_heights.get(node.column, 40)
        column_heights[node.column] = y + height + GAP
        nodes.append({
            "id": node.id, "type": node.type, "pos": [40 + node.column * COLUMN_WIDTH + (NOTE_WIDTH - NODE_WIDTH) * (node.column > 0), y],
            "size": [NODE_WIDTH, height], "flags": {}, "order": order[node.id] + 1, "mode": 0,
            "inputs": inputs, "outputs": outputs, "title": _title(node, defs),
            "properties": {"Node name for S&R": node.type, **_models_property(graph, node)},
            "widgets_values": widget_values,
        })  # fmt: skip
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"decoupled-ipadapter/workflows/{graph.name}")),
        "revision": 0, "last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links,
        "groups": [], "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}}, "version": EDITOR_VERSION,
        **({"models": _unnamed_models(graph)} if _unnamed_models(graph) else {}),
    }  # fmt: skip


def readme(graphs: list[Graph]) -> str:
    lines = [
        "# Example workflows",
        "",
        "Written by `scripts/build_workflows.py` (edit the graphs there, then run it; a test checks these files are",
        "what it writes). `NN_name.json` here is the editor format: ComfyUI lists the files in its template menu",
        "(Workflow → Browse Templates, under this pack), or drag one onto the canvas. `api/NN_name.json` is the same",
        "graph in the API format, for `POST /prompt` (`make demo` runs `api/01_image_prompt.json`).",
        "A note on each canvas lists the model files; the input files are the names below (use your own).",
        "",
        "| workflow | what it shows | model files | input files |",
        "|---|---|---|---|",
    ]
    for graph in graphs:
        models = "<br>".join(f"`{model.folder}/{model.name}`" for model in graph.models)
        folders = tuple(f"{folder}/ (pictures and .txt captions)" for folder in graph.dataset_folders)
        pictures = ", ".join(f"`{name}`" for name in graph.images + graph.embeds_files + folders)
        lines.append(f"| `{graph.name}` ({graph.title}) | {graph.summary} | {models} | {pictures} |")
    lines += ["", "## Where to get the model files", "", *model_table(_models_of(graphs))]
    return "\n".join(lines) + "\n"


def _models_of(graphs: list[Graph]) -> list[ModelSource]:
    seen = []
    for model in (model for graph in graphs for model in graph.models):
        if model not in seen:
            seen.append(model)
    return seen


def model_table(models) -> list[str]:
    """Markdown rows: each file, its folder, and where to get it."""
    lines = ["| file | folder | where to get it |", "|---|---|---|"]
    lines += [f"| `{model.name}` | `models/{model.folder}/` | {_where_to_get(model)} |" for model in models]
    return lines


def main_readme(text: str) -> str:
    """README.md with its model table (every file of MODEL_SOURCES) rewritten between its two markers."""
    before, start, rest = text.partition(MODEL_TABLE_START)
    _, end, after = rest.partition(MODEL_TABLE_END)
    if not start or not end:
        raise ValueError(f"README.md lacks the markers {MODEL_TABLE_START!r} ... {MODEL_TABLE_END!r}")
    return before + start + "\n" + "\n".join(model_table(MODEL_SOURCES)) + "\n" + end + after


def _dumps(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def rendered_files(defs: dict | None = None) -> dict[Path, str]:
    """Every file the generator writes, path -> text."""
    defs = defs or load_node_defs()
    graphs = [build() for build in GRAPHS]
    files = {}
    for graph in graphs:
        files[WORKFLOWS / f"{graph.name}.json"] = _dumps(editor_format(graph, defs))
        files[API_FOLDER / f"{graph.name}.json"] = _dumps(api_format(graph, defs))
    files[README] = readme(graphs)
    files[MAIN_README] = main_readme(MAIN_README.read_text())
    return files


def used_node_types() -> set[str]:
    return {node.type for build in GRAPHS for node in build().nodes}


def stale_files(files: dict[Path, str]) -> list[str]:
    """Paths that differ from what the generator writes, and generated-looking files it no longer writes."""
    stale = [str(path.relative_to(REPO)) for path, text in files.items()
             if not path.is_file() or path.read_text() != text]  # fmt: skip
    present = set(WORKFLOWS.glob("*.json")) | set(API_FOLDER.glob("*.json"))
    stale += [str(path.relative_to(REPO)) + " (not generated)" for path in sorted(present - set(files))]
    return stale


def refresh_node_defs() -> None:
    import server_process

    with server_process.running_server() as server:
        object_info = server.client.object_info()
        version = server.client.system_stats()["system"]["comfyui_version"]
    path = node_defs_path(version)
    path.write_text(_dumps(node_def_subset(object_info, used_node_types() - set(FRONTEND_ONLY))))
    print(f"[workflows] wrote {path.relative_to(REPO)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit code 1 when a file differs")
    parser.add_argument("--refresh-node-defs", action="store_true",
                        help="re-read the node definitions of the ComfyUI that COMFYUI_DIR names into scripts/node_defs/<version>.json")  # fmt: skip
    options = parser.parse_args(argv)
    if options.refresh_node_defs:
        refresh_node_defs()
    files = rendered_files()
    if options.check:
        stale = stale_files(files)
        for path in stale:
            print(f"[workflows] out of date: {path}")
        if stale:
            print("[workflows] run: python scripts/build_workflows.py")
        return 1 if stale else 0
    API_FOLDER.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"[workflows] wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
