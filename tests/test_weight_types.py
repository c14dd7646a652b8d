"""Weight types on the tiny SD1.5 and SDXL UNets: each one's per-layer map against the shared note's table.

The expected maps are the note's table (`shared/research/controls-reference.md` §3) written in its own notation,
laid on the layers through the transformer index ComfyUI itself passes to each layer's patch in a forward pass.
Where a type is a diffusers dict (SDXL style transfer, composition, style and composition = InstantStyle), the map
equals what diffusers' `set_ip_adapter_scale` sets for that dict.
"""

import pytest
from unet_controls import diffusers_layer_scales, tiny_unet

from decoupled_ipadapter.ipadapter_core.controls import LayerControl
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.ipadapter_core.unet.weight_types import CURVES, WEIGHT_TYPES, layer_controls

pytestmark = pytest.mark.host

W, C = 0.8, 0.3  # weight, composition_weight; b (cubiq's style / composition boost) is w here

NOTE_TABLE = {
    "SDXL": {
        "style transfer": "6: w",
        "composition": "3: w",
        "strong style transfer": "0..2, 4..10: w",
        "style and composition": "3: c; 6: w",
        "strong style and composition": "0..2, 4..10: w; 3: c",
        "style transfer precise": "3: b; 6: w",
        "composition precise": "0, 1, 2, 4, 5, 7..10: 0.1b; 3: w; 6: b",
    },
    "SD1.5": {
        "style transfer": "0..3, 9..15: w",
        "composition": "4: 0.25w; 5: w",
        "strong style transfer": "0..3, 6..15: w",
        "style and composition": "0..3, 9..15: w; 4: 0.25c; 5: c",
        "strong style and composition": "0..3, 6..15: w; 4, 5: c",
        "style transfer precise": "0..3, 9..15: w; 4: 0.25b; 5: b",
        "composition precise": "0..3, 9..15: b; 4: 0.25w; 5: w; 6..8: 0.1b",
    },
}
COMPOSITION_INDEXES = {"SDXL": {3}, "SD1.5": {4, 5}}
INSTANTSTYLE = {  # SDXL types that are diffusers dicts (with c = w for style and composition)
    "style transfer": {"up": {"block_0": [0, 1, 0]}},
    "composition": {"down": {"block_2": [0.0, 1.0]}},
    "style and composition": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},
}


def note_weights(entry: str) -> dict[int, float]:
    """'0..3, 9..15: w; 4: 0.25c' → {index: value} with w = W, c = C, b = W."""
    values = {}
    for clause in entry.split(";"):
        indexes, _, value = clause.partition(":")
        factor, symbol = value.strip()[:-1] or "1", value.strip()[-1]
        amount = float(factor) * {"w": W, "c": C, "b": W}[symbol]
        for part in indexes.split(","):
            first, _, last = part.strip().partition("..")
            for index in range(int(first), int(last or first) + 1):
                values[index] = amount
    return values


@pytest.fixture(scope="module", params=["SD1.5", "SDXL"])
def tiny(request, comfy_host):
    return tiny_unet(request.param)


def controls_of(tiny, weight_type, **options):
    options = {"weight": W, "composition_weight": C} | options
    return layer_controls(tiny.modules, weight_type=weight_type, **options)


@pytest.mark.parametrize("weight_type", list(NOTE_TABLE["SDXL"]))
def test_preset_maps_are_the_notes_table(tiny, weight_type):
    expected = note_weights(NOTE_TABLE[tiny.layout][weight_type])
    controls = controls_of(tiny, weight_type)
    assert set(controls) == set(tiny.runtime)
    for key, (index, _) in tiny.runtime.items():
        assert controls[key].weight == pytest.approx(expected.get(index, 0.0), abs=1e-12), (key, index)


@pytest.mark.parametrize("weight_type", list(NOTE_TABLE["SDXL"]))
def test_composition_embeds_and_precise_swaps_go_where_the_note_says(tiny, weight_type):
    composition = COMPOSITION_INDEXES[tiny.layout]
    for key, control in controls_of(tiny, weight_type).items():
        index = tiny.runtime[key][0]
        reads_composition = weight_type in ("style and composition", "strong style and composition") and index in composition
        assert control.embeds == ("composition" if reads_composition else "main"), (key, index)
        swapped = {"style transfer precise": index in composition, "composition precise": index not in composition}
        assert control.swap_cond_uncond == swapped.get(weight_type, False), (key, index)


# The note's layer curves at a few indexes, worked out by hand from its formulas (t the transformer index, L = 16 on
# SD1.5 and 11 on SDXL), as factors of w. The middle module is SD1.5's index 6 and SDXL's index 4.
CURVE_POINTS = {
    "SD1.5": {
        "ease in": {0: 1.0, 3: 0.821875, 6: 0.64375, 15: 0.109375},
        "ease out": {0: 0.05, 3: 0.228125, 6: 0.40625, 15: 0.940625},
        "ease in-out": {0: 0.05, 3: 0.40625, 6: 0.7625, 15: 0.16875},
        "reverse in-out": {0: 1.0, 3: 0.64375, 6: 0.2875, 15: 0.88125},
    },
    "SDXL": {
        "ease in": {0: 1.0, 2: 0.82727273, 4: 0.65454545, 10: 0.13636364},
        "ease out": {0: 0.05, 2: 0.22272727, 4: 0.39545455, 10: 0.91363636},
        "ease in-out": {0: 0.05, 2: 0.39545455, 4: 0.74090909, 10: 0.22272727},
        "reverse in-out": {0: 1.0, 2: 0.65454545, 4: 0.30909091, 10: 0.82727273},
    },
}
# The block curves in the note's table notation: input modules SD1.5 0..5 and SDXL 0..3, then the middle one, then output.
PART_CURVES = {
    "SD1.5": {
        "linear": "0..15: w",
        "weak input": "0..5: 0.2w; 6..15: w",
        "weak output": "0..6: w; 7..15: 0.2w",
        "weak middle": "0..5, 7..15: w; 6: 0.2w",
        "strong middle": "0..5, 7..15: 0.2w; 6: w",
    },
    "SDXL": {
        "linear": "0..10: w",
        "weak input": "0..3: 0.2w; 4..10: w",
        "weak output": "0..4: w; 5..10: 0.2w",
        "weak middle": "0..3, 5..10: w; 4: 0.2w",
        "strong middle": "0..3, 5..10: 0.2w; 4: w",
    },
}


def test_every_curve_is_checked():
    for layout in ("SD1.5", "SDXL"):
        assert set(CURVE_POINTS[layout]) | set(PART_CURVES[layout]) == set(CURVES)


@pytest.mark.parametrize("weight_type", list(CURVE_POINTS["SD1.5"]))
def test_layer_curves_pass_through_the_notes_points(tiny, weight_type):
    points = CURVE_POINTS[tiny.layout][weight_type]
    controls = controls_of(tiny, weight_type)
    checked = set()
    for key, (index, _) in tiny.runtime.items():
        if index in points:
            assert controls[key] == LayerControl(weight=pytest.approx(W * points[index], rel=1e-7)), (key, index)
            checked.add(index)
    assert checked == set(points)


@pytest.mark.parametrize("weight_type", list(PART_CURVES["SD1.5"]))
def test_block_curves_weaken_the_parts_the_note_names_including_the_middle(tiny, weight_type):
    expected = note_weights(PART_CURVES[tiny.layout][weight_type])
    controls = controls_of(tiny, weight_type)
    for key, (index, _) in tiny.runtime.items():
        assert controls[key] == LayerControl(weight=pytest.approx(expected[index], abs=1e-12)), (key, index)


@pytest.mark.parametrize("weight_type", list(INSTANTSTYLE))
def test_sdxl_types_that_are_diffusers_dicts_give_the_same_layer_map(comfy_host, weight_type):
    tiny = tiny_unet("SDXL")
    expected = {key: W * scale for key, scale in diffusers_layer_scales(tiny, INSTANTSTYLE[weight_type]).items()}
    ours = controls_of(tiny, weight_type, composition_weight=W)
    assert {key: control.weight for key, control in ours.items()} == pytest.approx(expected, abs=1e-12)
    assert sum(control.weight != 0 for control in ours.values()) == {"composition": 10, "style transfer": 10}.get(weight_type, 20)


def test_block_weights_replace_the_weights_and_keep_the_routing(tiny):
    plain = controls_of(tiny, "style and composition")
    replaced = controls_of(tiny, "style and composition", block_weights="6:1.0, 5:0.5")
    for key, control in replaced.items():
        index = tiny.runtime[key][0]
        assert control.weight == pytest.approx(W * {6: 1.0, 5: 0.5}.get(index, 0.0), abs=1e-12)
        assert (control.embeds, control.swap_cond_uncond) == (plain[key].embeds, plain[key].swap_cond_uncond)


def test_zero_weight_leaves_every_layer_unweighted(tiny):
    for weight_type in WEIGHT_TYPES:
        controls = controls_of(tiny, weight_type, weight=0.0, composition_weight=0.0)
        assert all(control.weight == 0 for control in controls.values()), weight_type


def test_the_options_are_spelled_as_the_issue_names_them():
    assert WEIGHT_TYPES == (
        "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output", "weak middle",
        "strong middle", "style transfer", "composition", "strong style transfer", "style and composition",
        "strong style and composition", "style transfer precise", "composition precise",
    )  # fmt: skip
    assert set(NOTE_TABLE["SDXL"]) | set(CURVES) == set(WEIGHT_TYPES)


def test_unknown_type_and_presets_on_other_layouts_are_refused(tiny):
    with pytest.raises(IPAdapterError, match="Unknown weight_type 'style'.*style transfer precise"):
        controls_of(tiny, "style")
    with pytest.raises(IPAdapterError, match="defined for the SD1.5 and SDXL layouts.*this model has 10"):
        layer_controls(tiny.modules[:10], weight_type="style transfer", weight=W, composition_weight=C)
    ten = layer_controls(tiny.modules[:10], weight_type="ease in", weight=W, composition_weight=C)
    by_index = {module.index: [ten[layer.key].weight for layer in module.layers] for module in tiny.modules[:10]}
    ease_in_of_ten = {0: 1.0, 5: 0.525, 9: 0.145}  # the note's curve with L = 10, by hand
    for index, factor in ease_in_of_ten.items():
        assert by_index[index] == pytest.approx([W * factor] * len(by_index[index]), rel=1e-9), index
    assert len(ten) == sum(len(module.layers) for module in tiny.modules[:10])
