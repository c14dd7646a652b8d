"""The training run, on ComfyUI's device and memory management.

The model (the ModelPatcher, with whatever weight patches it carries) is cloned and given a training patch on every
cross-attention layer (patch.py), then loaded by ComfyUI onto its device (its inference-mode weights replaced by
equal tensors autograd can use, `usable_by_autograd`); only the adapter's parameters require
gradients and are in the optimiser, so the diffusion model, the text encoder and the image encoder stay frozen
(their outputs are computed once, dataset.py). Each step draws its batch, drops, timesteps and noise from
`step_generator(seed, step)`, runs the model through `BaseModel.apply_model` (ComfyUI's input scaling, extra
conditioning, weight patches) and takes one AdamW step on the denoising loss of the model's parameterisation.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from ..errors import IPAdapterError
from ..unet.format import BASE_OF_CROSS_ATTENTION_DIM, BASE_OF_LAYER_COUNT
from ..unet.layer_map import CrossAttentionLayer, cross_attention_modules, is_unet
from .dataset import Caption, TrainingData
from .files import restore_training_state
from .method import (
    BOTH_DROP,
    IMAGE_DROP,
    TEXT_DROP,
    denoising_loss,
    drop_choices,
    parameterisation,
    step_generator,
)
from .patch import TrainingBatch, training_model

TRAINING_DTYPES = ("auto", "fp32", "bf16", "fp16")
LOWEST_PERCENT = 1e-6  # the timestep draw stays inside (0, 1): ComfyUI maps percent 0 to an infinite sigma


@dataclass(frozen=True)
class TrainingSettings:
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    training_dtype: str = "auto"  # TRAINING_DTYPES
    gradient_checkpointing: bool = False
    image_drop: float = IMAGE_DROP
    text_drop: float = TEXT_DROP
    both_drop: float = BOTH_DROP


@dataclass
class TrainingRun:
    adapter: torch.nn.Module  # the fp32 IPAdapterModel, trained
    optimizer: torch.optim.Optimizer
    steps_done: int  # all steps, those of the runs this one resumed included
    losses: list[float]  # this run's loss per step


def trainable_layers(model) -> list[tuple[CrossAttentionLayer, torch.nn.Module]]:
    """The cross-attention layers (with their attn2 modules) of an SD1.5 or SDXL UNet; other families are refused."""
    diffusion_model = model.get_model_object("diffusion_model")
    layers = cross_attention_modules(diffusion_model) if is_unet(diffusion_model) else []
    widths = {layer.context_dim for layer, _ in layers}
    if len(layers) not in BASE_OF_LAYER_COUNT or len(widths) != 1 or widths.pop() not in BASE_OF_CROSS_ATTENTION_DIM:
        config = getattr(model.model, "model_config", None)
        kind = type(config).__name__ if config is not None else type(model.model).__name__
        raise IPAdapterError(
            f"the model is {kind} (diffusion model {type(diffusion_model).__name__}, {len(layers)} cross-attention "
            "layers), a family this pack cannot train an adapter for. Training needs an SD1.5 or SDXL UNet "
            "checkpoint (16 or 70 cross-attention layers of text width 768 or 2048), such as one loaded with Load "
            "Checkpoint."
        )
    parameterisation(model.get_model_object("model_sampling"))
    return layers


def text_keys_values(model) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each cross-attention layer's to_k / to_v weights as the model computes with them (its weight patches, LoRAs,
    applied: the model is loaded first), by adapter layer number."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    return {layer.number: (attn2.to_k.weight.detach(), attn2.to_v.weight.detach()) for layer, attn2 in trainable_layers(model)}


def compute_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 where ComfyUI says the device runs it well, else fp16 where it does, else fp32 (the CPU)."""
    import comfy.model_management as management

    if setting == "auto":
        if management.should_use_bf16(device):
            return torch.bfloat16
        return torch.float16 if management.should_use_fp16(device) else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def model_conditioning(base_model, captions: list[Caption], *, noise: torch.Tensor, device) -> dict:
    """The model's conditioning inputs for a batch, one caption per row, as ComfyUI's samplers build them
    (`extra_conds`: the text tokens, SDXL's size vector…), concatenated over the rows."""
    rows = [
        base_model.extra_conds(**caption.options, cross_attn=caption.cross_attn, noise=noise[index : index + 1], device=device)
        for index, caption in enumerate(captions)
    ]
    return {key: rows[0][key].concat([row[key] for row in rows[1:]]) for key in rows[0]}


def denoise(patched, batch: TrainingBatch, adapter, *, latents, noise, sigmas, image_inputs, captions, dtype) -> torch.Tensor:
    """The patched model's denoised prediction `[B, C, h, w]` for clean `latents` noised with `noise` at `sigmas`
    `[B]`, each row reading its own image input (`[B, E]` or `[B, S, E]`) and caption."""
    device = patched.load_device
    model_sampling = patched.get_model_object("model_sampling")
    latents, noise, sigmas = latents.to(device), noise.to(device), sigmas.to(device)
    noisy = model_sampling.noise_scaling(sigmas, noise, latents)  # [B, C, h, w]
    conditioning = model_conditioning(patched.model, captions, noise=noisy, device=device)
    options = {**patched.model_options.get("transformer_options", {}), "sigmas": sigmas}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        # kept until the next call: gradient checkpointing runs the layers again in the backward pass
        batch.tokens = adapter.image_proj(image_inputs.to(device))  # [B, T, C]
        return patched.model.apply_model(noisy, sigmas, transformer_options=options, **conditioning)


def step_loss(patched, batch, adapter, data: TrainingData, settings: TrainingSettings, step: int, *, kind, dtype) -> torch.Tensor:
    """The loss of training step `step`: its batch, drops, timesteps and noise drawn from `step_generator`."""
    generator = step_generator(settings.seed, step)
    rows = torch.randint(data.size, (settings.batch_size,), generator=generator).tolist()
    drops = drop_choices(
        torch.rand(len(rows), generator=generator),
        image_drop=settings.image_drop, text_drop=settings.text_drop, both_drop=settings.both_drop,
    )  # fmt: skip
    model_sampling = patched.get_model_object("model_sampling")
    percents = torch.rand(len(rows), generator=generator).clamp_min(LOWEST_PERCENT).tolist()
    sigmas = torch.tensor([model_sampling.percent_to_sigma(percent) for percent in percents])  # [B]
    latents = data.latents[rows]  # [B, C, h, w]
    noise = torch.randn(latents.shape, generator=generator)
    image_inputs = torch.cat(
        [data.unconditional_image if dropped else data.image_inputs[row : row + 1] for row, dropped in zip(rows, drops.image.tolist())]
    )  # [B, E] or [B, S, E]
    captions = [data.empty_caption if dropped else data.captions[row] for row, dropped in zip(rows, drops.text.tolist())]
    denoised = denoise(
        patched, batch, adapter, latents=latents, noise=noise, sigmas=sigmas, image_inputs=image_inputs,
        captions=captions, dtype=dtype,
    )  # fmt: skip
    sigma_data = float(getattr(model_sampling, "sigma_data", 1.0))
    return denoising_loss(denoised, latents.to(denoised.device), sigmas, kind=kind, sigma_data=sigma_data)


def checkpointed(diffusion_model):
    """Gradient checkpointing on the blocks core's trainer picks (comfy_extras.nodes_train): each recomputes its
    activations in the backward pass. The UNet sets which block runs in its `transformer_options` dict as it goes
    (the attn2 patches are looked up by it), so each block gets a copy of that dict as it was at its call, and the
    recomputation finds the same patches. Returns the function that undoes it."""
    from comfy_extras.nodes_train import find_all_highest_child_module_with_forward

    def snapshot(value):
        return dict(value) if isinstance(value, dict) else value

    modules = find_all_highest_child_module_with_forward(diffusion_model)
    for module in modules:

        def forward(*args, original=module.forward, **kwargs):
            args, kwargs = [snapshot(arg) for arg in args], {key: snapshot(value) for key, value in kwargs.items()}
            return torch.utils.checkpoint.checkpoint(original, *args, use_reentrant=False, **kwargs)

        module.forward = forward  # an instance attribute over the class's forward
    return lambda: [vars(module).pop("forward") for module in modules]


def usable_by_autograd(module: torch.nn.Module) -> None:
    """Replace the module's inference-mode tensors (ComfyUI loads models inside `torch.inference_mode()`, and such
    tensors cannot be saved for the backward pass) by equal normal ones, one at a time, as ComfyUI replaces weights
    when it patches them; their values stay exactly the same."""
    for submodule in module.modules():
        for name, parameter in list(submodule._parameters.items()):
            if parameter is not None and parameter.is_inference():
                submodule._parameters[name] = torch.nn.Parameter(parameter.detach().clone(), requires_grad=False)
        for name, buffer in list(submodule._buffers.items()):
            if buffer is not None and buffer.is_inference():
                submodule._buffers[name] = buffer.clone()


def train(
    model,
    adapter: torch.nn.Module,
    data: TrainingData,
    settings: TrainingSettings,
    *,
    resume: tuple[dict[str, torch.Tensor], int] | None = None,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
) -> TrainingRun:
    """Train the fp32 `adapter` on the ModelPatcher `model` for `settings.steps` steps; `resume`: a training state
    and its step count (files.py) to continue from. `on_step(steps_done_in_this_run, loss)` after every step
    (progress, and ComfyUI's cancel: it raises there)."""
    import comfy.model_management

    trainable_layers(model)
    model_sampling = model.get_model_object("model_sampling")
    kind = parameterisation(model_sampling)
    device = model.load_device
    dtype = compute_dtype(settings.training_dtype, device)
    adapter.to(device).requires_grad_(True)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    first_step = 0
    if resume is not None:
        state, first_step = resume
        restore_training_state(adapter, optimizer, state)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    batch = TrainingBatch()
    patched = training_model(model, adapter, batch)
    patched.model.requires_grad_(False)  # the diffusion model is frozen: no gradients are computed for it
    if dtype != torch.float32:
        patched.set_model_compute_dtype(dtype)
    losses = []
    undo = checkpointed(patched.model.diffusion_model) if settings.gradient_checkpointing else lambda: None
    try:
        comfy.model_management.load_models_gpu([patched], force_full_load=True)
        usable_by_autograd(patched.model.diffusion_model)
        for step in range(first_step, first_step + settings.steps):
            loss = step_loss(patched, batch, adapter, data, settings, step, kind=kind, dtype=dtype)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            on_step(len(losses), losses[-1])
    finally:
        undo()
        adapter.requires_grad_(False)
    return TrainingRun(adapter=adapter, optimizer=optimizer, steps_done=first_step + settings.steps, losses=losses)
