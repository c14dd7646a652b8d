"""Per-block weights (`block_weights`) on the tiny SD1.5 and SDXL UNets, against diffusers and ComfyUI themselves.

- The transformer modules: their diffusers names through ComfyUI's own diffusers key map, their transformer
  indexes as ComfyUI passes them to the attn2 patches in a forward pass.
- Scale dicts: the weight of every layer equals what diffusers' `set_ip_adapter_scale` sets on the twin's
  IP-Adapter processor of that layer (InstantStyle's style and style + layout dicts, dicts naming the middle block,
  whole parts, lists of one), times `weight`.
- The index form against the runtime transformer index; every bad text is refused with a valid example.
"""

import json
import re

import pytest
from unet_controls import diffusers_layer_scales, tiny_unet

from decoupled_ipadapter.ipadapter_core.block_weights import check_block_weights_text
from decoupled_ipadapter.ipadapter_core.unet.block_weights import parse_block_weights
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError

pytestmark = pytest.mark.host

SCALE_DICTS = {
    "SDXL": [
        {"up": {"block_0": [0.0, 1.0, 0.0]}},  # InstantStyle: style
        {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},  # InstantStyle: style + layout
        {"mid": 0.7, "up": {"block_1": 0.3}},
        {"down": [0.2, 0.4], "mid": [0.9], "up": {"block_0": [0.6]}},
        {"down": 0.5, "up": 1.25},
        {},
    ],
    "SD1.5": [
        {"up": {"block_1": 1.0}},  # InstantStyle (experimental on SD1.5): style
        {"down": {"block_2": 1.0}, "mid": 1.0, "up": {"block_1": 1.0}},  # style + layout
        {"down": {"block_0": [0.25, 0.5]}, "up": {"block_3": [0.1, 0.2, 0.3]}, "mid": -0.5},
        {"up": [0.0, 1.0, 0.5], "mid": 2},
    ],
}


@pytest.fixture(scope="module", params=["SD1.5", "SDXL"])
def tiny(request, comfy_host):
    return tiny_unet(request.param)


def test_modules_are_named_as_diffusers_and_indexed_as_comfyui_runs_them(tiny):
    runtime_layers = sorted(tiny.runtime)
    assert sorted(layer.key for module in tiny.modules for layer in module.layers) == runtime_layers
    for module in tiny.modules:
        for transformer_block, layer in enumerate(module.layers):
            processor = f"{module.diffusers_name}.transformer_blocks.{transformer_block}.attn2.processor"
            assert tiny.comfy_key_of_processor[processor] == layer.key
            assert tiny.runtime[layer.key] == (module.index, module.block)
    assert len(tiny.modules) == {"SD1.5": 16, "SDXL": 11}[tiny.layout]


@pytest.mark.parametrize(
    ("tiny", "scale"), [(layout, scale) for layout, scales in SCALE_DICTS.items() for scale in scales], indirect=["tiny"]
)
@pytest.mark.parametrize("weight", [1.0, 0.6])
def test_scale_dicts_mean_what_set_ip_adapter_scale_makes_of_them(tiny, scale, weight):
    expected = {key: weight * value for key, value in diffusers_layer_scales(tiny, scale).items()}
    ours = parse_block_weights(json.dumps(scale), tiny.modules, weight=weight)
    assert ours == expected
    assert any(value != 0 for value in ours.values()) or scale == {}


def test_the_middle_block_is_weighted(tiny):
    ours = parse_block_weights('{"mid": 0.8}', tiny.modules, weight=1.0)
    middle = {key: value for key, value in ours.items() if key[0] == "middle"}
    assert middle and set(middle.values()) == {0.8}
    assert set(value for key, value in ours.items() if key[0] != "middle") == {0.0}
    assert ours == diffusers_layer_scales(tiny, {"mid": 0.8})


def test_index_form_weights_every_layer_of_the_indexed_modules(tiny):
    text = "3:1.0, 6:0.5\n 2 : -0.25,"
    named = {3: 1.0, 6: 0.5, 2: -0.25}
    ours = parse_block_weights(text, tiny.modules, weight=0.8)
    assert ours == {key: 0.8 * named.get(index, 0.0) for key, (index, _) in tiny.runtime.items()}


def test_blank_text_is_no_map(tiny):
    assert parse_block_weights("", tiny.modules, weight=1.0) is None
    assert parse_block_weights("  \n", tiny.modules, weight=1.0) is None


BAD_TEXTS = {
    "both": ['{"up": {"block_0": [0, 1, 0]}', '{"side": 1.0}', '{"up": {"block_1": "strong"}}', "3:1.0, banana",
             "3:", "3:1.0, 3:0.5", "99:1.0", '[{"up": 1.0}]', "0.5", '{"mid": [1.0, 0.5]}', '{"down": {"block_1": NaN}}',
             '{"up": {"block_1": true}}', '{"down": {"block_01": 1.0}}'],
    "SDXL": ['{"up": {"block_2": 1.0}}', '{"down": {"block_0": [0.0, 1.0]}}', '{"up": {"block_0": [0.0, 1.0]}}',
             '{"down": {"block_1": [1, 1, 1]}}', "11:1.0"],
    "SD1.5": ['{"up": {"block_0": 1.0}}', '{"down": {"block_3": 1.0}}', '{"up": {"block_1": [0.0, 1.0]}}', "16:0.5"],
}  # fmt: skip


def test_bad_texts_are_refused_quoting_them_with_a_valid_example_for_this_model(tiny):
    for text in BAD_TEXTS["both"] + BAD_TEXTS[tiny.layout]:
        with pytest.raises(IPAdapterError) as error:
            parse_block_weights(text, tiny.modules, weight=1.0)
        message = str(error.value)
        assert f'block_weights "{text}"' in message, message
        assert f"this {tiny.layout} model" in message
        dict_example = re.search(r"such as (\{.*?\}\}) \(", message)[1]
        index_example = re.search(r'with weights, such as "([^"]+)"', message)[1]
        for example in (dict_example, index_example):
            assert any(parse_block_weights(example, tiny.modules, weight=1.0).values()), example


def test_the_example_is_instantstyle_on_sdxl_and_names_real_blocks_on_sd15(tiny):
    with pytest.raises(IPAdapterError) as error:
        parse_block_weights("nonsense", tiny.modules, weight=1.0)
    expected = {"SDXL": '{"up": {"block_0": [0.0, 1.0, 0.0]}}', "SD1.5": '{"up": {"block_1": [0.0, 1.0, 0.0]}}'}
    assert expected[tiny.layout] in str(error.value)
    if tiny.layout == "SDXL":
        assert '"down": block_1 (2), block_2 (2); "mid"; "up": block_0 (3), block_1 (3)' in str(error.value)


def test_queue_time_validation_leaves_which_indexes_exist_to_the_model():
    """Before the model is known no index is too large (the node refuses it when it runs, naming the model's range);
    the form is still checked."""
    check_block_weights_text("3:1.0, 1000000:0.5")
    with pytest.raises(IPAdapterError, match='"3:x" has no number after the colon'):
        check_block_weights_text("3:x")
    with pytest.raises(IPAdapterError, match="index 3 is given twice"):
        check_block_weights_text("3:1.0, 3:0.5")
