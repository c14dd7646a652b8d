"""The training method of the paper (§3.3) and of the reference's `tutorial_train.py`, as pure functions.

- Each sample drops its image with probability `image_drop`, its text with `text_drop`, and both with
  `both_drop` (disjoint events, one uniform draw per sample), so classifier-free guidance works for each.
- A new adapter starts every layer's `to_k_ip` / `to_v_ip` from that layer's `to_k` / `to_v`; its projection from
  PyTorch's default initialisation under the training seed (the resampler's queries as the reference draws them).
- The loss is the denoising loss in the model's own parameterisation (ε or v), computed from ComfyUI's denoised
  prediction: for ε, `x0_pred - x0 = -σ·(ε_pred - ε)`; for v, `x0_pred - x0 = -(v_pred - v)·σ·σ_d / √(σ² + σ_d²)`.
"""

from dataclasses import dataclass

import torch

from ...models.adapter import IPAdapterModel
from ...models.image_projection import LinearProjection, Resampler
from ..errors import IPAdapterError
from ..unet.format import RESAMPLER_DIM_HEAD, RESAMPLER_FF_MULT
from ..unet.layer_map import CrossAttentionLayer

IMAGE_DROP = TEXT_DROP = BOTH_DROP = 0.05  # the reference's rates
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01
# The kinds a new adapter can be: (the projection, the CLIP output it reads); see unet/format.py.
ADAPTER_KINDS = {"ip-adapter": ("linear", "image_embeds"), "ip-adapter-plus": ("resampler", "penultimate_hidden_states")}
BASE_TOKENS = 4  # the base adapter's image tokens
PLUS_TOKENS = 16  # the plus adapter's resampler queries
PLUS_DEPTH = 4
RESAMPLER_DIM = {768: 768, 2048: 1280}  # the official plus files' resampler width, by text width (SD1.5, SDXL)
EPS_PARAMETERISATION, V_PARAMETERISATION = "eps", "v"


@dataclass(frozen=True)
class DropChoices:
    image: torch.Tensor  # [B] bool: the sample's reference is replaced by the unconditional image input
    text: torch.Tensor  # [B] bool: the sample's caption is replaced by the empty caption


def drop_choices(
    uniform: torch.Tensor, *, image_drop: float = IMAGE_DROP, text_drop: float = TEXT_DROP, both_drop: float = BOTH_DROP
) -> DropChoices:
    """The reference's rule on one uniform draw per sample `[B]`: below `image_drop` the image goes, then `text_drop`
    the text, then `both_drop` both."""
    image_only = uniform < image_drop
    text_only = (uniform >= image_drop) & (uniform < image_drop + text_drop)
    both = (uniform >= image_drop + text_drop) & (uniform < image_drop + text_drop + both_drop)
    return DropChoices(image=image_only | both, text=text_only | both)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random numbers of training step `step` (counted over resumed runs): a run resumed at step k draws what
    an uninterrupted run draws at step k."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def new_adapter(
    kind: str, layers: list[CrossAttentionLayer], text_keys_values: dict[int, tuple[torch.Tensor, torch.Tensor]], *,
    embedding_dim: int, seed: int,
) -> IPAdapterModel:  # fmt: skip
    """A new fp32 adapter of `kind` (ADAPTER_KINDS) for a UNet's cross-attention `layers`: K'/V' copied from each
    layer's `to_k` / `to_v` weights (`text_keys_values[layer.number]`), the projection initialised under `seed`."""
    cross_attention_dim = layers[0].context_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if ADAPTER_KINDS[kind][0] == "linear":
            projection = LinearProjection(
                embedding_dim=embedding_dim, cross_attention_dim=cross_attention_dim, num_tokens=BASE_TOKENS
            )
        else:
            dim = RESAMPLER_DIM[cross_attention_dim]
            projection = Resampler(
                dim=dim, depth=PLUS_DEPTH, dim_head=RESAMPLER_DIM_HEAD, heads=dim // RESAMPLER_DIM_HEAD,
                num_queries=PLUS_TOKENS, embedding_dim=embedding_dim, output_dim=cross_attention_dim,
                ff_mult=RESAMPLER_FF_MULT,
            )  # fmt: skip
            with torch.no_grad():  # the module leaves its queries to the file; a new one draws them as the reference does
                projection.latents.copy_(torch.randn(projection.latents.shape) / dim**0.5)
        adapter = IPAdapterModel(
            image_proj=projection,
            cross_attention_dim=cross_attention_dim,
            hidden_sizes={layer.number: layer.hidden_size for layer in layers},
        )
    with torch.no_grad():
        for layer in layers:
            to_k, to_v = text_keys_values[layer.number]
            adapter.layer(layer.number).to_k_ip.weight.copy_(to_k)
            adapter.layer(layer.number).to_v_ip.weight.copy_(to_v)
    return adapter.float()


def parameterisation(model_sampling) -> str:
    """ε or v: what the model predicts (ComfyUI's model_sampling classes); other kinds are refused."""
    import comfy.model_sampling as kinds

    if isinstance(model_sampling, (kinds.EDM, kinds.X0)) or not isinstance(model_sampling, kinds.EPS):
        raise IPAdapterError(
            f"Train IPAdapter: the model predicts with {type(model_sampling).__name__}, which this pack cannot train "
            "on; it trains ε- and v-prediction models (SD1.5, SD2.x, SDXL and their fine-tunes)."
        )
    return V_PARAMETERISATION if isinstance(model_sampling, kinds.V_PREDICTION) else EPS_PARAMETERISATION


def denoising_loss(
    denoised: torch.Tensor, latents: torch.Tensor, sigmas: torch.Tensor, *, kind: str, sigma_data: float = 1.0
) -> torch.Tensor:
    """MSE of the model's own prediction (ε or v, `kind`) against its target, from the denoised prediction
    `[B, C, H, W]`, the clean latents and the per-sample sigmas `[B]`."""
    sigma = sigmas.reshape(-1, *([1] * (latents.ndim - 1))).to(denoised)  # [B, 1, 1, 1]
    if kind == EPS_PARAMETERISATION:
        scale = sigma
    else:
        scale = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return (((denoised.float() - latents.float()) / scale) ** 2).mean()
