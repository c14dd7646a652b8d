"""Per-latent image prompts on the UNet: `unfold_batch` (latent j reads reference image j) and a list of weights
(latent j gets weight w_j), as pure functions of the call's rows.

An attention call's batch is `len(sides)` equal chunks (its conditionings, see guider_sides.py), each holding the
same latents in order. Latent j of a chunk is latent `indices[j]` of the whole batch: j itself, or, inside a context
window, the window's j-th index (AnimateDiff-Evolved's `ad_params["sub_idxs"]`, or ComfyUI's own
`context_window.index_list` when the window runs along the batch).

A list (images, weights, masks) shorter than the batch repeats its last entry and a longer one is cut: latent i
takes entry min(i, count − 1), which is also what padding the list to the full batch and picking the window's
indices gives, so the full length is not needed.

Every layer's λ is affine in the weight: λ_l(w) = a_l·w + b_l (a composition layer takes composition_weight, not w:
a_l = 0, b_l = c), so a weight list gives row j of layer l the weight a_l·w_j + b_l.
"""

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

from .controls import LayerControl
from .errors import IPAdapterError


def weight_values(weight) -> float | tuple[float, ...]:
    """Apply's `weight` as a number, or a tuple of numbers (one per latent) where a link gave a list of two or more;
    a list of one number is that number."""
    if not isinstance(weight, (list, tuple)):
        return checked_number(weight)
    if not weight:
        raise IPAdapterError(
            "weight is an empty list. Give a number, or a list of numbers (one per latent, for example from "
            "IPAdapter Weights)."
        )
    values = tuple(checked_number(value) for value in weight)
    return values[0] if len(values) == 1 else values


def checked_number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise IPAdapterError(
            f"weight holds {value!r} ({type(value).__name__}); it takes a finite number, or a list of numbers (one "
            "per latent, for example from IPAdapter Weights)."
        )
    return float(value)


def padded_index(index: int, count: int) -> int:
    """The entry latent `index` takes from a list of `count`: the last one repeats past the end."""
    return min(index, count - 1)


def latent_indices(extra_options: dict, per_chunk: int) -> tuple[int, ...]:
    """The batch index of each latent of a chunk: the context window's indices where one of the right length runs
    along the batch, else 0 … per_chunk − 1."""
    ad_params = extra_options.get("ad_params") or {}
    window = extra_options.get("context_window")
    for indices in (
        ad_params.get("sub_idxs"),
        getattr(window, "index_list", None) if getattr(window, "dim", None) == 0 else None,
    ):
        if indices is not None and len(indices) == per_chunk:
            return tuple(int(index) for index in indices)
    return tuple(range(per_chunk))


@dataclass(frozen=True)
class AffineWeight:
    """λ of one layer as a function of the weight w: slope·w + intercept."""

    slope: float
    intercept: float

    def at(self, weight: float) -> float:
        return self.slope * weight + self.intercept


def affine_weights(
    at_one: Mapping[Hashable, LayerControl], at_zero: Mapping[Hashable, LayerControl]
) -> dict[Hashable, AffineWeight]:
    """Every layer's λ(w), from its controls at weight 1 and at weight 0."""
    return {key: AffineWeight(control.weight - at_zero[key].weight, at_zero[key].weight) for key, control in at_one.items()}


@dataclass(frozen=True)
class PerLatent:
    """What an Apply call gives each latent: its weight (w_j, the last repeating) and, with `unfold`, its own image."""

    weights: tuple[float, ...]
    unfold: bool
    layer_weights: Mapping[Hashable, AffineWeight]  # layer key → λ(w)

    def acts_on(self, key: Hashable) -> bool:
        """Whether some latent gets a non-zero λ at this layer."""
        return key in self.layer_weights and any(self.entry_weights(key))

    def entry_weights(self, key: Hashable) -> list[float]:
        """λ of this layer for each entry of the weight list."""
        return [self.layer_weights[key].at(weight) for weight in self.weights]

    def acts_on_latents(self, key: Hashable, indices: Sequence[int]) -> bool:
        """Whether some latent of `indices` gets a non-zero λ at this layer."""
        line = self.layer_weights[key]
        return any(line.at(self.weights[padded_index(index, len(self.weights))]) != 0 for index in indices)


def row_sides(sides: Sequence[int], latents: int) -> list[int]:
    """The side of every batch row, chunk after chunk (each chunk `latents` rows)."""
    return [side for side in sides for _ in range(latents)]


def row_entries(chunks: int, indices: Sequence[int], count: int) -> list[int]:
    """The entry of a list of `count` (images, weights, masks) every batch row takes, chunk after chunk."""
    return [padded_index(index, count) for index in indices] * chunks
