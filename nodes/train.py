"""Train IPAdapter: fit an adapter to a checkpoint on pictures and captions (the paper's §3.3), as core's Train LoRA
node trains a LoRA; the result is saved to models/ipadapter and goes straight on to Apply."""

import os

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..ipadapter_core.training.dataset import Caption
from ..ipadapter_core.training.loop import TRAINING_DTYPES, TrainingSettings
from ..ipadapter_core.training.loss_curve import loss_curve_image
from ..ipadapter_core.training.method import ADAPTER_KINDS, LEARNING_RATE, WEIGHT_DECAY
from ..ipadapter_core.training.run import output_file_path, train_adapter_file
from .errors import errors_named_for, one_of, validation_result
from .loader import FOLDER
from .types import IPAdapterType

DISPLAY_NAME = "Train IPAdapter"
DEFAULT_FILE = "my-ip-adapter_sd15.safetensors"


def output_folder() -> str:
    """ComfyUI's own models/ipadapter (not a folder extra_model_paths.yaml adds, which may be shared or read-only)."""
    return os.path.join(folder_paths.models_dir, FOLDER)


def caption_encoder(clip):
    """A caption's conditioning as CLIPTextEncode makes it."""

    def encode(caption: str) -> Caption:
        cross_attn, options = clip.encode_from_tokens_scheduled(clip.tokenize(caption))[0]
        return Caption(cross_attn=cross_attn, options=dict(options))

    return encode


def latent_encoder(model, vae):
    """Pictures `[N, H, W, 3]` -> the model's latents, as VAE Encode and the samplers make them."""
    return lambda pixels: model.model.process_latent_in(vae.encode(pixels))


def show_progress(progress, node_id, steps: int):
    """After each step: ComfyUI's progress bar, the loss as the node's text, and the cancel button's check."""

    def on_step(done: int, loss: float) -> None:
        progress.update_absolute(done, steps)
        from server import PromptServer

        server = getattr(PromptServer, "instance", None)
        if server is not None and node_id is not None:
            server.send_progress_text(f"step {done}/{steps}  loss {loss:.5f}", node_id)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return on_step


def start_file_path(start) -> str | None:
    """The file the adapter to start from was loaded from (where its training state would be), if it is still there."""
    return None if start is None else folder_paths.get_full_path(FOLDER, start.adapter.source)


class TrainIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterTrain",
            display_name=DISPLAY_NAME,
            category="decoupled_ipadapter",
            is_experimental=True,
            is_input_list=True,  # the dataset nodes give lists of pictures and captions
            description=(
                "Trains an IP-Adapter on pictures and their captions (the paper's method): the model, the text and "
                "image encoders stay frozen; the image projection and every cross-attention layer's to_k_ip/to_v_ip "
                "learn. A new adapter starts K'/V' from each layer's text K/V; connect an adapter to fine-tune it "
                "instead. Training the saved file again with the same settings continues it. Saves to "
                "models/ipadapter (official format) and outputs the adapter for Apply and the loss curve."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The checkpoint the adapter is for (SD1.5 or SDXL); it stays frozen."),
                io.Clip.Input("clip", tooltip="The checkpoint's text encoder, for the captions."),
                io.ClipVision.Input("clip_vision", tooltip="The image encoder (CLIP ViT-H for ip-adapter_sd15 and the plus adapters)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE, to encode the pictures into latents."),
                io.Image.Input("images", tooltip="The pictures, e.g. from Load Image and Text Dataset from Folder; one size."),
                io.String.Input("captions", force_input=True, tooltip="One caption per picture, in the same order."),
                io.Int.Input("steps", default=1000, min=0, max=1_000_000, tooltip="Optimiser steps of this run."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Pictures per step."),
                io.Float.Input("learning_rate", default=LEARNING_RATE, min=1e-7, max=1.0, step=1e-6, tooltip="AdamW's learning rate."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                    tooltip="Initial weights, batches, drops, timesteps and noise.",
                ),
                io.Combo.Input(
                    "adapter_kind",
                    options=list(ADAPTER_KINDS),
                    default="ip-adapter",
                    tooltip="A new adapter's kind: ip-adapter (4 tokens from the image embeds) or ip-adapter-plus "
                    "(16 tokens, a resampler over the hidden states). A connected adapter keeps its own kind.",
                ),
                io.String.Input("filename", default=DEFAULT_FILE, tooltip="The file in models/ipadapter to save to (replaced if it exists)."),
                IPAdapterType.Input("ipadapter", optional=True, tooltip="An adapter to fine-tune (from Load IPAdapter); none: train a new one."),
                io.Float.Input("weight_decay", default=WEIGHT_DECAY, min=0.0, max=1.0, step=0.001, optional=True, tooltip="AdamW's weight decay."),
                io.Combo.Input(
                    "training_dtype",
                    options=list(TRAINING_DTYPES),
                    default="auto",
                    optional=True,
                    tooltip="auto: bf16 or fp16 where the device runs them, else fp32 (the CPU).",
                ),
                io.Boolean.Input(
                    "gradient_checkpointing",
                    default=False,
                    optional=True,
                    tooltip="Recompute the model's activations in the backward pass: less memory, about a third slower.",
                ),
            ],
            outputs=[
                IPAdapterType.Output(display_name="ipadapter", tooltip="The trained adapter, as Load IPAdapter loads the saved file."),
                io.Image.Output(display_name="loss_curve", tooltip="The loss at each step of this run."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, filename=None, adapter_kind=None, training_dtype=None):
        """The file name and the options are refused when the prompt is queued (inputs come as lists here)."""
        checks = (
            (filename, lambda name: output_file_path(output_folder(), name)),
            (adapter_kind, one_of(ADAPTER_KINDS, input_name="adapter_kind")),
            (training_dtype, one_of(TRAINING_DTYPES, input_name="training_dtype")),
        )
        for values, check in checks:
            for value in values if isinstance(values, list) else [values]:
                result = validation_result(value, check)
                if result is not True:
                    return f"{DISPLAY_NAME}: {result}"
        return True

    @classmethod
    def execute(
        cls, model, clip, clip_vision, vae, images, captions, steps, batch_size, learning_rate, seed, adapter_kind,
        filename, ipadapter=None, weight_decay=(WEIGHT_DECAY,), training_dtype=("auto",), gradient_checkpointing=(False,),
    ) -> io.NodeOutput:  # fmt: skip
        start = None if ipadapter is None else ipadapter[0]
        settings = TrainingSettings(
            steps=steps[0], batch_size=batch_size[0], learning_rate=learning_rate[0], weight_decay=weight_decay[0],
            seed=seed[0], training_dtype=training_dtype[0], gradient_checkpointing=gradient_checkpointing[0],
        )  # fmt: skip
        comfy.model_management.throw_exception_if_processing_interrupted()
        with errors_named_for(DISPLAY_NAME), torch.inference_mode(False):
            output_path = output_file_path(output_folder(), filename[0])
            trained, losses = train_adapter_file(
                model[0], encode_latents=latent_encoder(model[0], vae[0]), clip_vision=clip_vision[0], encode_text=caption_encoder(clip[0]),
                images=images, captions=captions, start=start, start_path=start_file_path(start),
                kind=adapter_kind[0], settings=settings, output_path=output_path,
                on_step=show_progress(comfy.utils.ProgressBar(max(settings.steps, 1)), cls.hidden.unique_id, settings.steps),
            )  # fmt: skip
        return io.NodeOutput(trained, loss_curve_image(losses))
