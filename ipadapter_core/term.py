"""One Apply node's image prompt, as the UNet and Flux mechanisms read it (`TermBasics`: what every mechanism's term
holds, the SD3 one in mmdit/term.py included).

An `ImagePromptTerm` holds the adapter, the embeds, the step range and, per layer, a `LayerControl` (λ, whose
image tokens the layer reads, the precise swap). It caches, per device and dtype, the projected image tokens (once
per embeds) and each layer's K'/V' (once per layer, not per step), with the layer's λ and the embeds scaling already
folded in: `Attn(Q, K', s·V') = s·Attn(Q, K', V')`. A term with an attention mask also caches the mask brought to
each query count. A term with a weight per latent or `unfold_batch` (`per_latent`, unfold.py; UNet only) caches
instead each image's unscaled K'/V' and λ per entry of the weight list, and gathers every call's rows from them
(`row_keys_values`).

Every term keeps one contract, whatever its mechanism: `acts_at(layer, sigma)` and `keys_values(layer, device, dtype,
*, sigma)` (sigma: the step, which only the SD3 term's K'/V' depend on). A layer is anything with a `number` (the
adapter file's K'/V' layer) and a `key` (what `controls` is keyed by): a UNet `CrossAttentionLayer`, or a `DitBlock`.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .adapter import LoadedAdapter
from .attention import COND
from .controls import ApplyOptions, LayerControl
from .embeds import ImagePromptEmbeds
from .embeds_scaling import scale_image_kv
from .masks import downsample_mask
from .patch_protocol import is_same_device
from .schedule import SigmaRange, model_sigma_range
from .unfold import PerLatent, row_entries, row_sides

UNPATCHED = LayerControl(weight=0.0)


@dataclass(frozen=True)
class DitBlock:
    """A DiT block as a term's layer: its number in the adapter file (K'/V' per block) and the key its per-block
    control is found under (the key of ComfyUI's `dit` patch: a Flux double block or an MMDiT joint block,
    `("double_block", number)`, or a Flux single block, `("single_block", index)` with `index` counted among the
    single blocks while the InstantX Flux file numbers them after the double blocks)."""

    number: int
    kind: str = "double_block"
    index: int | None = None  # the block's index among its kind; None: `number`

    @property
    def key(self) -> tuple[str, int]:
        return (self.kind, self.number if self.index is None else self.index)


def precise_swap(by_side: torch.Tensor) -> torch.Tensor:
    """The precise swap of `[2 (cond, uncond), …]` image keys or values: the unconditional side takes the image
    prompt's, the conditional side zeros (whose attention is exactly 0)."""
    return torch.stack([torch.zeros_like(by_side[COND]), by_side[COND]])  # [2, …]


class TermBasics:
    """What every mechanism's term holds: the adapter, its weights' ModelPatcher, the embeds, λ and the step range."""

    def __init__(
        self, *, adapter: LoadedAdapter, weights_patcher, embeds: ImagePromptEmbeds, weight: float, sigmas: SigmaRange
    ):
        self.adapter = adapter
        self.weights_patcher = weights_patcher  # ModelPatcher over adapter.model, shared by every term of this file
        self.embeds = embeds
        self.weight = weight
        self.sigmas = sigmas

    def layer_weight(self, layer) -> float:
        """λ at `layer`: the term's weight, unless the term has a control per layer."""
        return self.weight

    def acts_on(self, layer) -> bool:
        """Whether the term ever adds anything at `layer` (a layer where it does not gets no patch from it)."""
        return self.layer_weight(layer) != 0

    def acts_at(self, layer, sigma: float | None) -> bool:
        return self.acts_on(layer) and self.sigmas.contains(sigma)


def term_basics(model, adapter: LoadedAdapter, weights_patcher, embeds: ImagePromptEmbeds, options: ApplyOptions) -> dict:
    """The `TermBasics` arguments of one Apply call on the ModelPatcher `model` (a weight list: its first value; the
    per-latent term reads the whole list)."""
    sigmas = model_sigma_range(model, start_at=options.start_at, end_at=options.end_at)
    weight = options.weight[0] if isinstance(options.weight, tuple) else float(options.weight)
    return {"adapter": adapter, "weights_patcher": weights_patcher, "embeds": embeds, "weight": weight, "sigmas": sigmas}


class ImagePromptTerm(TermBasics):
    def __init__(
        self,
        *,
        controls: Mapping[tuple, LayerControl] | None = None,
        embeds_scaling: str = "V only",
        composition_embeds: ImagePromptEmbeds | None = None,
        mask: torch.Tensor | None = None,
        faceid_v2_weight: float = 1.0,
        per_latent: PerLatent | None = None,
        **basics,
    ):
        super().__init__(**basics)
        self.per_latent = per_latent  # None: one λ and one image prompt for every latent
        self.faceid_v2_weight = faceid_v2_weight  # FaceID PlusV2's s (the shortcut's scale)
        self.controls = controls  # layer key → LayerControl; None: every layer λ = weight, the main embeds
        self.embeds_scaling = embeds_scaling
        self.composition_embeds = composition_embeds  # None: the composition layers read `embeds`
        self._uniform = LayerControl(weight=self.weight)
        self.mask = mask  # [M, H, W] in 0..1, or None: the whole picture
        self._tokens: dict[tuple, torch.Tensor] = {}
        self._keys_values: dict[tuple, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._masks: dict[tuple, torch.Tensor] = {}
        self._row_indexes: dict[tuple, torch.Tensor] = {}  # per-latent terms: see row_index

    def control(self, layer) -> LayerControl:
        if self.controls is None:
            return self._uniform
        return self.controls.get(layer.key, UNPATCHED)

    def layer_weight(self, layer) -> float:
        return self.control(layer).weight

    def acts_on(self, layer) -> bool:
        if self.per_latent is None:
            return super().acts_on(layer)
        return self.per_latent.acts_on(layer.key)

    def keys_values(
        self, layer, device: torch.device, dtype: torch.dtype, *, sigma: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K' and s·V' of `layer`, `[2 (cond, uncond), N·T, hidden]`, for the layer's λ and the embeds scaling (the
        same at every step `sigma`).

        Under the precise swap the unconditional side holds the image prompt's K'/V' and the conditional side zeros,
        whose attention is exactly 0 (uniform weights over zero values)."""
        per_layer = self._keys_values.setdefault((device, dtype), {})
        if layer.number not in per_layer:
            control = self.control(layer)
            with torch.no_grad():
                keys, values = self.adapter.model.layer(layer.number)(self.tokens(device, dtype, embeds=control.embeds))
                keys, values, scale = scale_image_kv(keys, values, weight=control.weight, embeds_scaling=self.embeds_scaling)
                values = values * scale
                if control.swap_cond_uncond:
                    keys, values = precise_swap(keys), precise_swap(values)  # [2, N·T, hidden]
            per_layer[layer.number] = (keys, values)
        return per_layer[layer.number]

    def row_keys_values(
        self, layer, device: torch.device, dtype: torch.dtype, *, sides: tuple[int, ...], indices: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K' and V' of `layer` for every row of a batch of `len(sides)` chunks holding the latents `indices`:
        `[B, T, hidden]` each: the row's side, with `unfold` only its latent's image's tokens (else all N images' side
        by side), and the embeds scaling of its latent's λ (`scale_image_kv` with λ per row; V only: λ folded into
        V'). Cached per layer: the K'/V' of each image and λ of each entry of the weight list; gathered per call
        with cached row indexes (no device sync), so context windows that move every step cost no memory."""
        keys, values, weights = self.per_image_keys_values(layer, device, dtype)  # [2, G, T, hidden] ×2, [L]
        side_of_row = self.row_index(device, sides, indices, count=None)  # [B]
        image_of_row = self.row_index(device, sides, indices, count=keys.shape[1])  # [B]
        weight_of_row = weights[self.row_index(device, sides, indices, count=weights.shape[0])].view(-1, 1, 1)  # [B, 1, 1]
        row_keys, row_values = keys[side_of_row, image_of_row], values[side_of_row, image_of_row]  # [B, T, hidden]
        row_keys, row_values, scale = scale_image_kv(row_keys, row_values, weight=weight_of_row, embeds_scaling=self.embeds_scaling)
        return row_keys, row_values * scale

    def per_image_keys_values(self, layer, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """K' and V' of `layer` `[2 (cond, uncond), G, T, hidden]`, unscaled (G: the N images under `unfold`, else 1
        holding all N·T tokens; the precise swap applied), and λ of `layer` for each entry of the weight list `[L]`."""
        per_layer = self._keys_values.setdefault((device, dtype), {})
        key = ("per image", layer.number)
        if key not in per_layer:
            control = self.control(layer)
            groups = self.source(control.embeds).image_count if self.per_latent.unfold else 1
            with torch.no_grad():
                keys, values = self.adapter.model.layer(layer.number)(self.tokens(device, dtype, embeds=control.embeds))
                keys, values = (x.reshape(2, groups, x.shape[1] // groups, x.shape[2]) for x in (keys, values))  # [2, G, T, hidden]
                if control.swap_cond_uncond:
                    keys, values = precise_swap(keys), precise_swap(values)  # [2, G, T, hidden]
            weights = torch.tensor(self.per_latent.entry_weights(layer.key), device=device, dtype=dtype)  # [L]
            per_layer[key] = (keys, values, weights)
        return per_layer[key]

    def row_index(self, device: torch.device, sides: tuple[int, ...], indices: tuple[int, ...], *, count: int | None) -> torch.Tensor:
        """`[B]` on `device`: each row's side (count None), or the entry of a list of `count` its latent takes."""
        key = (device, sides, indices, count)
        if key not in self._row_indexes:
            rows = row_sides(sides, len(indices)) if count is None else row_entries(len(sides), indices, count)
            self._row_indexes[key] = torch.tensor(rows, device=device)  # [B]
        return self._row_indexes[key]

    def source(self, embeds: str) -> ImagePromptEmbeds:
        """The embeds a layer reads: the composition ones where it reads them and they are given, else the main ones."""
        return self.composition_embeds if embeds == "composition" and self.composition_embeds is not None else self.embeds

    def tokens(self, device: torch.device, dtype: torch.dtype, *, embeds: str = "main") -> torch.Tensor:
        """The projected image tokens `[2 (cond, uncond), N·T, C]` of the main or the composition embeds (the main
        ones when there are no composition embeds): the N images of the prompt side by side."""
        if self.composition_embeds is None:
            embeds = "main"
        if (embeds, device, dtype) not in self._tokens:
            source = self.source(embeds)
            projection = self.adapter.model.image_proj
            with torch.no_grad():
                both = torch.cat([source.positive, source.negative]).to(device=device, dtype=dtype)
                if source.face_positive is None:
                    tokens = projection(both)  # [2N, T, C]
                else:  # FaceID Plus: the face embeddings [2N, 512] read the CLIP hidden states of the crops
                    faces = torch.cat([source.face_positive, source.face_negative]).to(device=device, dtype=dtype)
                    tokens = projection(faces, both, shortcut_scale=self.faceid_v2_weight)  # [2N, T, C]
            images = source.image_count
            self._tokens[(embeds, device, dtype)] = tokens.reshape(2, images * tokens.shape[1], tokens.shape[2])  # [2, N·T, C]
        return self._tokens[(embeds, device, dtype)]

    def masks(self, queries: int, device: torch.device, dtype: torch.dtype, *, latent_size: tuple[int, int] | None) -> torch.Tensor:
        """The attention mask at a layer with `queries` queries on a latent of `latent_size` (height, width; None:
        unknown): `[M, queries, 1]`, one row per mask."""
        key = (queries, latent_size, device, dtype)
        if key not in self._masks:
            small = downsample_mask(self.mask, queries=queries, latent_size=latent_size)  # [M, queries]
            self._masks[key] = small.to(device=device, dtype=dtype).unsqueeze(-1)  # [M, queries, 1]
        return self._masks[key]

    def row_masks(
        self, queries: int, device: torch.device, dtype: torch.dtype, *, latent_size: tuple[int, int] | None,
        sides: tuple[int, ...], indices: tuple[int, ...],
    ) -> torch.Tensor:
        """Under `unfold`: the mask of every row of a batch of `len(sides)` chunks holding the latents `indices`,
        `[B, queries, 1]` (one mask: `[1, queries, 1]`, every row); latent i takes mask min(i, M − 1)."""
        masks = self.masks(queries, device, dtype, latent_size=latent_size)  # [M, queries, 1]
        if masks.shape[0] == 1:
            return masks
        return masks[self.row_index(device, sides, indices, count=masks.shape[0])]  # [B, queries, 1]

    def keep_cached_only_on(self, device: torch.device) -> None:
        """Drop the tokens, K'/V', masks and row indexes held on other devices (the model moved): memory is freed where it left."""
        self._tokens = {key: value for key, value in self._tokens.items() if is_same_device(key[1], device)}
        self._keys_values = {key: value for key, value in self._keys_values.items() if is_same_device(key[0], device)}
        self._masks = {key: value for key, value in self._masks.items() if is_same_device(key[2], device)}
        self._row_indexes = {key: value for key, value in self._row_indexes.items() if is_same_device(key[0], device)}
