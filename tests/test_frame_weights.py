"""IPAdapter Weights and its companions (ipadapter_core/frame_weights.py): each timing's curve against its formula
written out here, the frame range, the methods' references per frame, the added frames, the prompt schedule text,
Combine Weights, and the bad inputs."""

import math

import pytest
import torch

from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.frame_weights import (
    WeightsStrategy,
    combine_weights,
    cycle_weights,
    plan_frames,
    prompt_schedule,
)

CURVES = ("linear", "ease_in_out", "ease_in", "ease_out", "reverse_in_out")
HALF_SQRT2 = math.sqrt(2) / 2


def strategy(**settings) -> WeightsStrategy:
    defaults = dict(weights="1.0, 0.0", timing="linear", frames=0, start_frame=0, end_frame=9999, add_starting_frames=0,
                    add_ending_frames=0, method="full batch")  # fmt: skip
    return WeightsStrategy(**{**defaults, **settings})


def references(count: int) -> torch.Tensor:
    """[count, 2, 2, 3]: picture k is filled with k / 10, so a frame tells which reference it shows."""
    return (torch.arange(count, dtype=torch.float32) / 10).view(count, 1, 1, 1).expand(count, 2, 2, 3).contiguous()


def shown(pictures: torch.Tensor) -> list[int]:
    return [round(value * 10) for value in pictures[:, 0, 0, 0].tolist()]


# u = i / 4 on 5 frames from 0.2 to 1.0: the curve at u = 1/4 and u = 1/2, worked out by hand from each formula
KNOWN_POINTS = {
    "linear": (0.2 + 0.8 * 0.25, 0.6),
    "ease_in_out": (0.2 + 0.8 * (1 - HALF_SQRT2) / 2, 0.6),
    "ease_in": (0.2 + 0.8 * math.sin(math.pi / 8), 0.2 + 0.8 * HALF_SQRT2),
    "ease_out": (0.2 + 0.8 * (1 - math.cos(math.pi / 8)), 0.2 + 0.8 * (1 - HALF_SQRT2)),
    "reverse_in_out": (0.2 + 0.8 / 3, 0.6),  # arccos(1/2) / pi = 1/3: the inverse of ease_in_out, whose value at 1/3 is 1/4
}


@pytest.mark.parametrize("timing", CURVES)
def test_each_curve_runs_from_the_first_to_the_last_number_through_its_formula(timing):
    curve = cycle_weights(strategy(weights="0.2, 0.7, 1.0", timing=timing, frames=5))
    assert len(curve) == 5 and curve[0] == 0.2 and curve[-1] == 1.0
    assert all(a < b for a, b in zip(curve, curve[1:]))
    assert curve[1:3] == pytest.approx(KNOWN_POINTS[timing], abs=1e-12)


def steps(timing: str) -> list[float]:
    curve = cycle_weights(strategy(weights="0, 1", timing=timing, frames=9))
    return [b - a for a, b in zip(curve, curve[1:])]


def test_where_each_curve_is_steep():
    ease_in, ease_out, in_out, reverse = (steps(timing) for timing in ("ease_in", "ease_out", "ease_in_out", "reverse_in_out"))
    assert ease_in[0] > ease_in[-1] and ease_out[0] < ease_out[-1]  # the port's names: ease_in starts steep
    assert in_out[0] < in_out[3] > in_out[-1]
    assert reverse[0] > reverse[3] < reverse[-1] and reverse[0] == pytest.approx(reverse[-1])


def test_a_falling_curve_and_the_shortest_cycle():
    assert cycle_weights(strategy(weights="1, 0", frames=5)) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert cycle_weights(strategy(weights="", frames=0)) == [0.0, 1.0]  # no numbers: 0 to 1; at least 2 frames


def test_start_and_end_frames_hold_the_ends():
    held = cycle_weights(strategy(weights="0, 1", frames=10, start_frame=2, end_frame=6))
    assert held == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1, 1, 1, 1, 1])
    assert cycle_weights(strategy(weights="0, 1", frames=4, end_frame=9999)) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert cycle_weights(strategy(weights="0, 1", frames=4, start_frame=3)) == [0.0, 0.0, 0.0, 1.0]  # a one-frame curve


def test_custom_uses_the_numbers_themselves():
    assert cycle_weights(strategy(weights="0.1\n0.5,\n 0.9,", timing="custom", frames=7, start_frame=5, end_frame=2)) == [0.1, 0.5, 0.9]
    assert cycle_weights(strategy(weights=" ", timing="custom")) == [0.0]


def test_random_is_reproducible_in_range_and_holds_the_ends():
    first = cycle_weights(strategy(weights="0.3, 0.8", timing="random", frames=12, start_frame=2, end_frame=10, seed=5))
    assert first == cycle_weights(strategy(weights="0.3, 0.8", timing="random", frames=12, start_frame=2, end_frame=10, seed=5))
    assert first != cycle_weights(strategy(weights="0.3, 0.8", timing="random", frames=12, start_frame=2, end_frame=10, seed=6))
    assert len(first) == 12 and first[:2] == [0.3, 0.3] and first[-2:] == [0.8, 0.8]
    assert all(0.3 <= weight <= 0.8 for weight in first) and len(set(first[2:10])) == 8


CYCLE = [1.0, 0.5, 0.0]  # "1, 0" over 3 frames
MIRRORED = [0.0, 0.5, 1.0]


@pytest.mark.parametrize(("method", "count", "first", "second", "weights"), [
    ("full batch", 3, [0, 1, 2], None, CYCLE * 3),
    ("shift batches", 3, [0, 1], [1, 2], CYCLE * 2),
    ("alternate batches", 3, [0, 2], [1, 1], CYCLE + MIRRORED),
    ("alternate batches", 4, [0, 2, 2], [1, 1, 3], CYCLE + MIRRORED + CYCLE),
    ("alternate batches", 5, [0, 2, 2, 4], [1, 1, 3, 3], (CYCLE + MIRRORED) * 2),
])  # fmt: skip
def test_each_method_shows_its_references_per_frame(method, count, first, second, weights):
    plan = plan_frames(strategy(frames=3, method=method), count)
    assert plan.weights == weights
    assert plan.first_images == [image for image in first for _ in range(3)]
    assert plan.second_images == (None if second is None else [image for image in second for _ in range(3)])


def test_added_frames_hold_the_first_and_last_reference_and_weight():
    plan = plan_frames(strategy(frames=3, method="shift batches", add_starting_frames=2, add_ending_frames=1), 3)
    assert plan.weights == [1.0, 1.0, *CYCLE, *CYCLE, 0.0]
    assert plan.first_images == [0, 0, 0, 0, 0, 1, 1, 1, 2]
    assert plan.second_images == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    without_images = plan_frames(strategy(frames=3, add_starting_frames=2, add_ending_frames=1), None)
    assert without_images.weights == CYCLE and without_images.first_images is None  # the port's: added with images only


def test_prompt_schedule_keys_each_reference_where_it_starts():
    full = strategy(frames=4, add_starting_frames=2, add_ending_frames=3, image_count=3)
    assert prompt_schedule(full, 'a\n\nsay "b"\n') == '"0": "a",\n"2": "a",\n"6": "say \\"b\\"",\n"10": "say \\"b\\"",\n"14": "say \\"b\\"",\n'
    shift = strategy(frames=4, method="shift batches", add_ending_frames=2, image_count=3)
    assert prompt_schedule(shift, "a\nb\nc\nd") == '"0": "a",\n"4": "b",\n"8": "c",\n'  # the fade ends on c's key
    assert prompt_schedule(strategy(frames=4), "a") == ""  # made without references
    assert prompt_schedule(strategy(weights="1, 0.5, 0", timing="custom", image_count=2), "a\nb") == '"0": "a",\n"3": "b",\n'


def test_combine_joins_numbers_and_lists():
    assert combine_weights(0.5, [0.1, 0.2]) == [0.5, 0.1, 0.2]
    assert combine_weights([1.0], 0) == [1.0, 0.0]
    with pytest.raises(IPAdapterError, match="weights_2: 'x' is not a number"):
        combine_weights(0.5, ["x"])


@pytest.mark.parametrize(("settings", "count", "message"), [
    (dict(weights="1.0, abc"), None, "weights: 'abc' is not a number"),
    (dict(weights="1.0, nan"), None, "weights: 'nan' is not a finite number"),
    (dict(frames=10, start_frame=6, end_frame=6), None, r"start_frame \(6\) must be below end_frame \(6\)"),
    (dict(frames=4, start_frame=5), None, r"start_frame \(5\) must be below end_frame \(9999\) and frames \(4\)"),
    (dict(timing="smooth"), None, "'smooth' is not an option of timing"),
    (dict(method="shift batches"), 1, "connect 2 or more images"),
    (dict(), 0, "image is an empty batch"),
])  # fmt: skip
def test_bad_inputs_are_refused_naming_the_input(settings, count, message):
    with pytest.raises(IPAdapterError, match=message):
        plan_frames(strategy(**settings), count)


@pytest.mark.host
def test_the_nodes_run_and_name_themselves(comfy_host):
    from comfy_execution.graph_utils import ExecutionBlocker

    from decoupled_ipadapter.nodes.frame_weights import CombineWeights, PromptScheduleFromWeightsStrategy, Weights, WeightsFromStrategy

    settings = dict(weights="1, 0", timing="linear", frames=3, start_frame=0, end_frame=9999, add_starting_frames=0,
                    add_ending_frames=1, method="shift batches")  # fmt: skip
    assert Weights.validate_inputs(weights="1, 0", timing="linear", method="full batch") is True
    assert "weights: 'one' is not a number" in Weights.validate_inputs(weights="one, 0")
    assert "'up' is not an option of method" in Weights.validate_inputs(method="up")
    with torch.inference_mode():
        weights, invert, total, image_1, image_2, made = Weights.execute(**settings, image=references(3)).result
        assert weights == [*CYCLE, *CYCLE, 0.0] and invert == weights[::-1] and total == 7
        assert shown(image_1) == [0, 0, 0, 1, 1, 1, 2] and shown(image_2) == [1, 1, 1, 2, 2, 2, 2]
        assert made.image_count == 3 and made.method == "shift batches"

        *_, image_1, image_2, _ = WeightsFromStrategy.execute(weights_strategy=made, image=references(2)).result
        assert shown(image_1) == [0, 0, 0, 1] and shown(image_2) == [1, 1, 1, 1]
        (schedule,) = PromptScheduleFromWeightsStrategy.execute(weights_strategy=made, prompt="a\nb\nc").result
        assert schedule == '"0": "a",\n"3": "b",\n"6": "c",\n'

        weights, _, total, image_1, image_2, _ = Weights.execute(**{**settings, "method": "full batch"}).result
        assert weights == CYCLE and total == 3
        assert isinstance(image_1, ExecutionBlocker) and "has no image connected" in image_1.message
        *_, image_2, _ = Weights.execute(**{**settings, "method": "full batch"}, image=references(2)).result
        assert isinstance(image_2, ExecutionBlocker) and "shift batches or alternate batches only" in image_2.message

        assert CombineWeights.execute(weights_1=weights, weights_2=0.25).result == ([*CYCLE, 0.25], 4)
    with pytest.raises(IPAdapterError, match=r"^IPAdapter Weights: start_frame \(3\)"):
        Weights.execute(**{**settings, "start_frame": 3})
    with pytest.raises(IPAdapterError, match="^IPAdapter Weights From Strategy: method 'shift batches'"):
        WeightsFromStrategy.execute(weights_strategy=made, image=references(1))


@pytest.mark.host
def test_comfyui_reports_the_missing_image_to_the_node_that_reads_it(comfy_host, monkeypatch):
    """In ComfyUI's executor: a Preview Image on image_1 without references is stopped with our message, while the
    weights list goes on to its readers."""
    import execution
    import nodes

    from decoupled_ipadapter.nodes.frame_weights import CombineWeights, Weights

    for node in (Weights, CombineWeights):
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, node.define_schema().node_id, node)

    class Messages:
        client_id = last_node_id = last_prompt_id = None

        def __init__(self):
            self.sent = []

        def send_sync(self, event, data, client_id=None):
            self.sent.append((event, data))

    settings = dict(weights="1, 0", timing="linear", frames=3, start_frame=0, end_frame=9999, add_starting_frames=0,
                    add_ending_frames=0, method="full batch")  # fmt: skip
    prompt = {
        "1": {"class_type": "DecoupledIPAdapterWeights", "inputs": settings},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 3]}},
        "3": {"class_type": "DecoupledIPAdapterCombineWeights", "inputs": {"weights_1": ["1", 0], "weights_2": ["1", 1]}},
        "4": {"class_type": "PrimitiveInt", "inputs": {"value": ["3", 1]}},
    }
    server = Messages()
    execution.PromptExecutor(server, cache_args={"lru": 0, "ram": 0}).execute(prompt, "weights", {"client_id": "test"}, ["2", "4"])
    errors = [data for event, data in server.sent if event == "execution_error"]
    assert [(error["node_id"], error["exception_message"]) for error in errors] == [
        ("2", "Execution Blocked: IPAdapter Weights has no image connected: connect the references to its image input.")
    ]
    assert {data["node"] for event, data in server.sent if event == "executing"} >= {"1", "3", "4"}
