"""Per-frame weights for animations: a curve of image-prompt weights over the frames of each reference image, and
which reference each frame shows, for cross-fading a batch of references frame by frame.

One cycle of the curve (`cycle_weights`) goes from the first number of the `weights` text to its last over `frames`
frames (at least 2): `start_frame` frames hold the first value, the curve runs from `start_frame` to
`min(end_frame, frames)` (its last frame is exactly the last value), the remaining frames hold the last value. With
u = i / (n - 1) at the curve's i-th of n frames, value = first + (last - first) * f(u):
- linear: f(u) = u.
- ease_in_out: f(u) = (1 - cos(pi u)) / 2, flat at both ends, steep in the middle.
- ease_in: f(u) = sin(pi u / 2), steep at the start, flat at the end (the popular port's numbers; the usual easing
  names would call this one "out").
- ease_out: f(u) = 1 - cos(pi u / 2), flat at the start, steep at the end (idem, "in" in the usual naming).
- reverse_in_out: f(u) = arccos(1 - 2u) / pi, the inverse function of ease_in_out: steep at both ends, flat in the
  middle.
- random: each frame a uniform draw between first and last, from `seed` (the same seed gives the same weights).
- custom: the `weights` numbers themselves are the cycle; frames, start_frame and end_frame are not read.

With references (`plan_frames`), the cycle repeats per segment:
- full batch: one segment per image, showing that image (image_1 only).
- shift batches: one segment per pair (i, i + 1): image_1 is image i, image_2 image i + 1.
- alternate batches: one segment per pair too, the images taking turns in the two slots: segment k shows image
  k + k % 2 as image_1 and image k + 1 - k % 2 as image_2, and odd segments carry the cycle mirrored within its own
  range (max - (w - min)), so that the weights stay on image_1 while the fade runs on.
Then `add_starting_frames` frames of the first image (at the first weight) come before, `add_ending_frames` frames of
the last image (at the last weight) after; without references these two are not read.
"""

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from .errors import IPAdapterError

TIMINGS = ("custom", "linear", "ease_in_out", "ease_in", "ease_out", "reverse_in_out", "random")
METHODS = ("full batch", "shift batches", "alternate batches")
FULL_BATCH, SHIFT_BATCHES, ALTERNATE_BATCHES = METHODS

EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda u: u,
    "ease_in_out": lambda u: (1 - math.cos(math.pi * u)) / 2,
    "ease_in": lambda u: math.sin(math.pi * u / 2),
    "ease_out": lambda u: 1 - math.cos(math.pi * u / 2),
    "reverse_in_out": lambda u: math.acos(1 - 2 * u) / math.pi,
}
SHORTEST_CYCLE = 2  # the frames of a curve timing's cycle, at least


def parse_weights_text(text: str) -> list[float]:
    """The numbers of the `weights` text, separated by commas or new lines (blank entries skipped)."""
    numbers = []
    for entry in text.replace("\n", ",").split(","):
        if not entry.strip():
            continue
        try:
            number = float(entry)
        except ValueError:
            raise IPAdapterError(
                f"weights: '{entry.strip()}' is not a number; write numbers separated by commas or new lines, e.g. 1.0, 0.0."
            ) from None
        if not math.isfinite(number):
            raise IPAdapterError(f"weights: '{entry.strip()}' is not a finite number; use numbers such as 1.0, 0.0.")
        numbers.append(number)
    return numbers


@dataclass(frozen=True, kw_only=True)
class WeightsStrategy:
    """The inputs of IPAdapter Weights, refused on construction when they cannot make weights (module docstring)."""

    weights: str
    timing: str
    frames: int
    start_frame: int
    end_frame: int
    add_starting_frames: int
    add_ending_frames: int
    method: str
    seed: int = 0
    image_count: int = 0  # the references the strategy was made with (0: none); the prompt schedule counts them

    def __post_init__(self):
        for name, options in (("timing", TIMINGS), ("method", METHODS)):
            if getattr(self, name) not in options:
                raise IPAdapterError(f"'{getattr(self, name)}' is not an option of {name}; use one of: {', '.join(options)}.")
        for name in ("frames", "start_frame", "end_frame", "add_starting_frames", "add_ending_frames", "seed", "image_count"):
            if getattr(self, name) < 0:
                raise IPAdapterError(f"{name} ({getattr(self, name)}) must be 0 or more.")
        parse_weights_text(self.weights)
        if self.timing != "custom" and self.start_frame >= self.curve_end:
            raise IPAdapterError(
                f"start_frame ({self.start_frame}) must be below end_frame ({self.end_frame}) and frames "
                f"({self.cycle_length}): lower start_frame or raise end_frame and frames."
            )

    @property
    def cycle_length(self) -> int:
        """The frames of one cycle of a curve timing."""
        return max(self.frames, SHORTEST_CYCLE)

    @property
    def curve_end(self) -> int:
        """The frame after the curve's last (end_frame, at most the cycle's length)."""
        return min(self.end_frame, self.cycle_length)


def cycle_weights(strategy: WeightsStrategy) -> list[float]:
    """One cycle of the weights (module docstring): one value per frame."""
    numbers = parse_weights_text(strategy.weights)
    if strategy.timing == "custom":
        return numbers or [0.0]
    first, last = (numbers[0], numbers[-1]) if numbers else (0.0, 1.0)
    steps = strategy.curve_end - strategy.start_frame
    if strategy.timing == "random":
        draws = random.Random(strategy.seed)
        curve = [draws.uniform(first, last) for _ in range(steps)]
    else:
        easing = EASINGS[strategy.timing]
        curve = [first + (last - first) * easing(i / (steps - 1)) for i in range(steps - 1)] + [last]
    return [first] * strategy.start_frame + curve + [last] * (strategy.cycle_length - strategy.curve_end)


@dataclass(frozen=True)
class FramePlan:
    weights: list[float]  # one per frame
    first_images: list[int] | None  # the image_1 of each frame, an index into the references (None: no references)
    second_images: list[int] | None  # the image_2 of each frame (None: full batch, or no references)


def mirrored(cycle: list[float]) -> list[float]:
    """The cycle turned upside down within its own range."""
    top, bottom = max(cycle), min(cycle)
    return [top - (weight - bottom) for weight in cycle]


def _segments(method: str, image_count: int, cycle: list[float]) -> list[tuple[int, int | None, list[float]]]:
    """(image_1, image_2, weights) of each segment of `method` over `image_count` references."""
    if method == FULL_BATCH:
        return [(image, None, cycle) for image in range(image_count)]
    if image_count < 2:
        raise IPAdapterError(f"method '{method}' fades from image to image: connect 2 or more images (got {image_count}).")
    if method == SHIFT_BATCHES:
        return [(segment, segment + 1, cycle) for segment in range(image_count - 1)]
    return [
        (segment + segment % 2, segment + 1 - segment % 2, mirrored(cycle) if segment % 2 else cycle)
        for segment in range(image_count - 1)
    ]


def plan_frames(strategy: WeightsStrategy, image_count: int | None) -> FramePlan:
    """The weights of every frame, and which references image_1 and image_2 show there (None: no references)."""
    cycle = cycle_weights(strategy)
    if image_count is None:
        return FramePlan(cycle, None, None)
    if image_count == 0:
        raise IPAdapterError("image is an empty batch; connect one or more images, or leave it unconnected.")
    segments = _segments(strategy.method, image_count, cycle)
    weights = [weight for _, _, part in segments for weight in part]
    first = [image for image, _, part in segments for _ in part]
    second = None if strategy.method == FULL_BATCH else [image for _, image, part in segments for _ in part]
    before, after = strategy.add_starting_frames, strategy.add_ending_frames
    weights = [weights[0]] * before + weights + [weights[-1]] * after
    first = [0] * before + first + [image_count - 1] * after
    if second is not None:
        second = [0] * before + second + [image_count - 1] * after
    return FramePlan(weights, first, second)


def prompt_schedule(strategy: WeightsStrategy, prompt: str) -> str:
    """A keyframed prompt list (FizzNodes' batch prompt schedule text, `"frame": "prompt",` per line): the prompt's
    i-th non-blank line at the frame where the i-th reference starts (the last line repeated for the references
    beyond it, extra lines dropped), its first line at frame 0 when starting frames are added, and its last line
    where the ending frames start (full batch; the fades end on the last reference's key already). Empty without
    prompt lines or without references in the strategy."""
    lines = [line for line in prompt.split("\n") if line.strip()]
    count = strategy.image_count
    if not lines or count == 0:
        return ""
    lines = (lines + [lines[-1]] * count)[:count]
    cycle = len(cycle_weights(strategy))
    keys = {strategy.add_starting_frames + index * cycle: line for index, line in enumerate(lines)}
    if strategy.add_starting_frames > 0:
        keys = {0: lines[0], **keys}
    segments = count if strategy.method == FULL_BATCH else count - 1
    ending = strategy.add_starting_frames + segments * cycle
    if strategy.add_ending_frames > 0 and ending not in keys:
        keys[ending] = lines[-1]
    return "".join(f'"{frame}": {json.dumps(line, ensure_ascii=False)},\n' for frame, line in keys.items())


def combine_weights(weights_1, weights_2) -> list[float]:
    """weights_1's values, then weights_2's: each a number or a list of numbers."""
    return [*_as_weights(weights_1, "weights_1"), *_as_weights(weights_2, "weights_2")]


def _as_weights(value, input_name: str) -> list[float]:
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise IPAdapterError(f"{input_name}: {item!r} is not a number; connect a weight or a list of weights.")
    return [float(item) for item in values]
