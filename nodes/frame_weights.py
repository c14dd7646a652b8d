"""IPAdapter Weights and its companions: per-frame weights and references for animations, made in
ipadapter_core/frame_weights.py."""

import torch
from comfy_api.latest import io
from comfy_execution.graph_utils import ExecutionBlocker

from ..ipadapter_core.frame_weights import (
    FULL_BATCH,
    METHODS,
    TIMINGS,
    WeightsStrategy,
    combine_weights,
    parse_weights_text,
    plan_frames,
    prompt_schedule,
)
from .errors import errors_named_for, first_refusal, one_of
from .types import WeightsStrategyType

CATEGORY = "decoupled_ipadapter"
FRAME_LIMIT = 9999


def frames_input(name: str, default: int, tooltip: str):
    return io.Int.Input(name, default=default, min=0, max=FRAME_LIMIT, tooltip=tooltip)


def image_input():
    return io.Image.Input(
        "image",
        optional=True,
        tooltip="The references to fade between, one cycle of the weights each (full batch) or per pair (shift, "
        "alternate). Without it: only weights, the image outputs block whatever reads them.",
    )


def weights_outputs() -> list:
    """The outputs of IPAdapter Weights and IPAdapter Weights From Strategy."""
    return [
        io.Float.Output(display_name="weights", tooltip="One weight per frame (a list); connect to Apply's weight for image_1."),
        io.Float.Output(display_name="weights_invert", tooltip="The weights in reverse order; connect to Apply's weight for image_2."),
        io.Int.Output(display_name="total_frames", tooltip="The number of frames: make as many latents."),
        io.Image.Output(display_name="image_1", tooltip="The reference of each frame; connect to Encode Image's image."),
        io.Image.Output(display_name="image_2", tooltip="The reference each frame fades to (shift and alternate batches)."),
        WeightsStrategyType.Output(display_name="weights_strategy", tooltip="These settings, for Weights From Strategy and Prompt Schedule."),
    ]


def frames_of(images: torch.Tensor, indexes: list[int] | None, *, missing: str) -> torch.Tensor | ExecutionBlocker:
    """The references at `indexes`, one per frame ([F, H, W, C]); without indexes a blocker that stops, with `missing`
    as its error, any node that reads this output."""
    if indexes is None:
        return ExecutionBlocker(missing)
    return images.index_select(0, torch.tensor(indexes, device=images.device))  # [F, H, W, C]


def weights_output(display_name: str, strategy: WeightsStrategy, image) -> io.NodeOutput:
    with errors_named_for(display_name):
        plan = plan_frames(strategy, None if image is None else image.shape[0])
    no_image = f"{display_name} has no image connected: connect the references to its image input."
    image_1 = frames_of(image, plan.first_images, missing=no_image)
    if image is not None and strategy.method == FULL_BATCH:
        image_2 = ExecutionBlocker(f"{display_name}: image_2 exists with method shift batches or alternate batches only; use image_1.")
    else:
        image_2 = frames_of(image, plan.second_images, missing=no_image)
    return io.NodeOutput(plan.weights, plan.weights[::-1], len(plan.weights), image_1, image_2, strategy)


class Weights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterWeights",
            display_name="IPAdapter Weights",
            category=CATEGORY,
            description=(
                "Per-frame weights for animations: a curve from the first to the last number of weights over frames "
                "(or the numbers themselves, timing custom), repeated for each reference of image, with the "
                "references per frame (image_1, and image_2 to fade to with shift or alternate batches). Connect "
                "weights to Apply's weight and image_1 to Encode Image, with one latent per frame."
            ),
            inputs=[
                io.String.Input(
                    "weights",
                    default="1.0, 0.0",
                    multiline=True,
                    tooltip="Numbers separated by commas or new lines: the curve runs from the first to the last; "
                    "with timing custom, the weights of the frames themselves.",
                ),
                io.Combo.Input(
                    "timing",
                    options=list(TIMINGS),
                    default="linear",
                    tooltip="The curve's shape. ease_in is steep at the start and ease_out at the end (the popular "
                    "port's curves); reverse_in_out is steep at both ends; random draws from seed.",
                ),
                frames_input("frames", 0, "The frames of one cycle (at least 2; not read by custom)."),
                frames_input("start_frame", 0, "The frame where the curve leaves the first value (frames before hold it)."),
                frames_input("end_frame", FRAME_LIMIT, "The frame where the curve has reached the last value (frames after hold it)."),
                frames_input("add_starting_frames", 0, "Frames of the first reference added before (with image only)."),
                frames_input("add_ending_frames", 0, "Frames of the last reference added after (with image only)."),
                io.Combo.Input(
                    "method",
                    options=list(METHODS),
                    default=FULL_BATCH,
                    tooltip="full batch: a cycle per reference. shift batches: a cycle per pair (i, i+1). alternate "
                    "batches: the same pairs, the two slots taking turns.",
                ),
                image_input(),
                io.Int.Input("seed", default=0, min=0, max=2**32 - 1, optional=True, tooltip="The draws of timing random."),
            ],
            outputs=weights_outputs(),
        )

    @classmethod
    def validate_inputs(cls, weights=None, timing=None, method=None):
        return first_refusal(
            (weights, parse_weights_text),
            (timing, one_of(TIMINGS, input_name="timing")),
            (method, one_of(METHODS, input_name="method")),
        )

    @classmethod
    def execute(
        cls, weights, timing, frames, start_frame, end_frame, add_starting_frames, add_ending_frames, method, image=None,
        seed=0,
    ) -> io.NodeOutput:  # fmt: skip
        with errors_named_for("IPAdapter Weights"):
            strategy = WeightsStrategy(
                weights=weights, timing=timing, frames=frames, start_frame=start_frame, end_frame=end_frame,
                add_starting_frames=add_starting_frames, add_ending_frames=add_ending_frames, method=method, seed=seed,
                image_count=0 if image is None else image.shape[0],
            )  # fmt: skip
        return weights_output("IPAdapter Weights", strategy, image)


class WeightsFromStrategy(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterWeightsFromStrategy",
            display_name="IPAdapter Weights From Strategy",
            category=CATEGORY,
            description="The outputs of IPAdapter Weights for its settings (weights_strategy) and another image batch.",
            inputs=[WeightsStrategyType.Input("weights_strategy", tooltip="From IPAdapter Weights."), image_input()],
            outputs=weights_outputs(),
        )

    @classmethod
    def execute(cls, weights_strategy, image=None) -> io.NodeOutput:
        return weights_output("IPAdapter Weights From Strategy", weights_strategy, image)


class PromptScheduleFromWeightsStrategy(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterPromptScheduleFromWeightsStrategy",
            display_name="IPAdapter Prompt Schedule From Weights Strategy",
            category=CATEGORY,
            description=(
                'A keyframed prompt schedule ("frame": "prompt", per line, as FizzNodes\' Batch Prompt Schedule reads '
                "it): the prompt's n-th line at the frame where the n-th reference of the strategy starts."
            ),
            inputs=[
                WeightsStrategyType.Input("weights_strategy", tooltip="From IPAdapter Weights (made with an image)."),
                io.String.Input("prompt", default="", multiline=True, tooltip="One prompt per reference, a line each; blank lines skipped."),
            ],
            outputs=[io.String.Output(display_name="prompt_schedule", tooltip="Empty without prompt lines or references.")],
        )

    @classmethod
    def execute(cls, weights_strategy, prompt) -> io.NodeOutput:
        return io.NodeOutput(prompt_schedule(weights_strategy, prompt))


class CombineWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterCombineWeights",
            display_name="IPAdapter Combine Weights",
            category=CATEGORY,
            description="One list of weights: weights_1's, then weights_2's (each a weight or a list of weights).",
            inputs=[
                io.Float.Input(name, default=0.0, min=0.0, max=1.0, step=0.05, tooltip="A weight, or a list from IPAdapter Weights.")
                for name in ("weights_1", "weights_2")
            ],
            outputs=[
                io.Float.Output(display_name="weights", tooltip="The joined list; connect to Apply's weight."),
                io.Int.Output(display_name="count", tooltip="Its length."),
            ],
        )

    @classmethod
    def execute(cls, weights_1, weights_2) -> io.NodeOutput:
        with errors_named_for("IPAdapter Combine Weights"):
            weights = combine_weights(weights_1, weights_2)
        return io.NodeOutput(weights, len(weights))
