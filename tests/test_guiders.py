"""ComfyUI's guiders through SamplerCustomAdvanced (its node classes called in-process): with every guider the
patched model runs, λ = 0 gives exactly the unpatched model, the image prompt acts, and each pass of each guider gets
the image tokens the rule of ipadapter_core/guider_sides.py names.

A guider's passes are told apart by choosing its scales so that the result is one pass alone (CFG with cfg 0 is its
negative pass, DualCFG with cfg_conds 0 and cfg_cond2_negative 1 its cond2 pass, …). That pass must equal
BasicGuider on the same text with the model patched by the tokens the rule gives it: the image prompt, or embeds
whose image is the unconditional one. The other choice must give a different picture, so each case can fail.
"""

import comfy_sampling_helpers as helpers
import pytest
from comfy_sampling_helpers import apply, close, image_embeds, linear_adapter, unconditional_only
from tiny_models import tiny_comfy_model

POSITIVE, NEGATIVE, MIDDLE, EMPTY = "positive", "negative", "middle", "empty"
IMAGE, UNCONDITIONAL = "image prompt", "unconditional tokens"


@pytest.fixture(scope="module")
def setup(comfy_host):
    model = tiny_comfy_model("SD1.5", seed=5)
    managed = linear_adapter(model, seed=8)
    embeds = image_embeds(4)
    width = helpers.text_width(model)
    texts = {name: helpers.text_conditioning(seed, width) for seed, name in enumerate((POSITIVE, NEGATIVE, MIDDLE, EMPTY), start=11)}
    models = {
        "plain": model,
        "zero": apply(model, managed, embeds, weight=0.0),
        IMAGE: apply(model, managed, embeds, weight=1.0),
        UNCONDITIONAL: apply(model, managed, unconditional_only(embeds), weight=1.0),
    }
    return models, texts


def cfg_guider(model, texts, *, cfg, negative=NEGATIVE):
    from comfy_extras.nodes_custom_sampler import CFGGuider

    return CFGGuider.execute(model=model, positive=texts[POSITIVE], negative=texts[negative], cfg=cfg).result[0]


def basic_guider(model, texts, *, text=POSITIVE):
    from comfy_extras.nodes_custom_sampler import BasicGuider

    return BasicGuider.execute(model=model, conditioning=texts[text]).result[0]


def dual_cfg_guider(model, texts, *, style, cfg_conds, cfg_cond2_negative):
    from comfy_extras.nodes_custom_sampler import DualCFGGuider

    return DualCFGGuider.execute(
        model=model, cond1=texts[POSITIVE], cond2=texts[MIDDLE], negative=texts[NEGATIVE],
        cfg_conds=cfg_conds, cfg_cond2_negative=cfg_cond2_negative, style=style,
    ).result[0]  # fmt: skip


def perp_neg_guider(model, texts, *, cfg, neg_scale, negative=NEGATIVE):
    from comfy_extras.nodes_perpneg import PerpNegGuider

    return PerpNegGuider.execute(
        model=model, positive=texts[POSITIVE], negative=texts[negative], empty_conditioning=texts[EMPTY],
        cfg=cfg, neg_scale=neg_scale,
    ).result[0]  # fmt: skip


BUILDERS = {"CFGGuider": cfg_guider, "BasicGuider": basic_guider, "DualCFGGuider": dual_cfg_guider, "PerpNegGuider": perp_neg_guider}

GUIDERS = {  # name: (guider, its settings)
    "CFGGuider": ("CFGGuider", dict(cfg=4.0)),
    "CFGGuider cfg 1": ("CFGGuider", dict(cfg=1.0)),
    "BasicGuider": ("BasicGuider", {}),
    "DualCFGGuider regular": ("DualCFGGuider", dict(style="regular", cfg_conds=3.0, cfg_cond2_negative=2.0)),
    "DualCFGGuider nested": ("DualCFGGuider", dict(style="nested", cfg_conds=3.0, cfg_cond2_negative=2.0)),
    "PerpNegGuider": ("PerpNegGuider", dict(cfg=4.0, neg_scale=1.0)),
}


@pytest.mark.parametrize("name", list(GUIDERS))
def test_every_guider_runs_weight_zero_is_exact_and_the_image_prompt_acts(setup, name):
    models, texts = setup
    guider, settings = GUIDERS[name]
    plain = helpers.custom_sample(BUILDERS[guider](models["plain"], texts, **settings))
    assert helpers.custom_sample(BUILDERS[guider](models["zero"], texts, **settings)).equal(plain), "λ = 0 must be exactly the unpatched model"
    patched = helpers.custom_sample(BUILDERS[guider](models[IMAGE], texts, **settings))
    assert patched.isfinite().all()
    assert (patched - plain).abs().max() > 1e-3, "the image prompt must change the picture"


ONE_PASS = {  # case: (guider, settings whose result is one pass alone, the text of that pass, the tokens the rule gives it)
    "CFGGuider cfg 0: the negative pass": ("CFGGuider", dict(cfg=0.0), NEGATIVE, UNCONDITIONAL),
    "CFGGuider cfg 1: the positive pass": ("CFGGuider", dict(cfg=1.0), POSITIVE, IMAGE),
    "DualCFG regular (0, 0): negative": ("DualCFGGuider", dict(style="regular", cfg_conds=0.0, cfg_cond2_negative=0.0), NEGATIVE, UNCONDITIONAL),
    "DualCFG regular (0, 1): cond2": ("DualCFGGuider", dict(style="regular", cfg_conds=0.0, cfg_cond2_negative=1.0), MIDDLE, UNCONDITIONAL),
    "DualCFG regular (1, 1): cond1": ("DualCFGGuider", dict(style="regular", cfg_conds=1.0, cfg_cond2_negative=1.0), POSITIVE, IMAGE),
    "DualCFG nested (3, 0): negative": ("DualCFGGuider", dict(style="nested", cfg_conds=3.0, cfg_cond2_negative=0.0), NEGATIVE, UNCONDITIONAL),
    "DualCFG nested (0, 1): cond2": ("DualCFGGuider", dict(style="nested", cfg_conds=0.0, cfg_cond2_negative=1.0), MIDDLE, UNCONDITIONAL),
    "DualCFG nested (1, 1): cond1": ("DualCFGGuider", dict(style="nested", cfg_conds=1.0, cfg_cond2_negative=1.0), POSITIVE, IMAGE),
    "PerpNeg cfg 0: the empty pass": ("PerpNegGuider", dict(cfg=0.0, neg_scale=1.0), EMPTY, UNCONDITIONAL),
    "PerpNeg cfg 1, neg_scale 0: the positive pass": ("PerpNegGuider", dict(cfg=1.0, neg_scale=0.0), POSITIVE, IMAGE),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ONE_PASS))
def test_each_pass_gets_the_tokens_the_rule_names(setup, case):
    models, texts = setup
    guider, settings, text, tokens = ONE_PASS[case]
    other = IMAGE if tokens == UNCONDITIONAL else UNCONDITIONAL
    guided = helpers.custom_sample(BUILDERS[guider](models[IMAGE], texts, **settings))
    alone = helpers.custom_sample(basic_guider(models[tokens], texts, text=text))
    assert close(guided, alone), f"the {text} pass did not get the {tokens}"
    wrong = helpers.custom_sample(basic_guider(models[other], texts, text=text))
    assert not close(wrong, alone, relative=1e-3), "the two token choices must give different pictures"


def test_perp_neg_negative_pass_gets_the_unconditional_tokens_like_its_empty_pass(setup):
    """With the empty prompt as negative text, PerpNeg's negative and empty passes are the same pass if, and only
    if, they get the same tokens; the perpendicular part is then zero and PerpNeg is plain CFG."""
    models, texts = setup
    perp_neg = helpers.custom_sample(perp_neg_guider(models[IMAGE], texts, cfg=4.0, neg_scale=1.0, negative=EMPTY))
    cfg = helpers.custom_sample(cfg_guider(models[IMAGE], texts, cfg=4.0, negative=EMPTY))
    assert close(perp_neg, cfg)


def test_a_negative_pass_on_a_second_model_gets_the_unconditional_tokens(setup):
    """DualModelGuider (later ComfyUI versions) runs the negative pass on a second model, with a copy of the guider's
    negative list that is found by its uuids: with the same patched model for both passes it is CFGGuider."""
    from comfy_extras import nodes_custom_sampler

    if not hasattr(nodes_custom_sampler, "DualModelGuider"):
        pytest.skip("this ComfyUI has no DualModelGuider")
    models, texts = setup
    guider = nodes_custom_sampler.DualModelGuider.execute(
        model=models[IMAGE], positive=texts[POSITIVE], cfg=4.0, model_negative=models[IMAGE], negative=texts[NEGATIVE]
    ).result[0]
    assert close(helpers.custom_sample(guider), helpers.custom_sample(cfg_guider(models[IMAGE], texts, cfg=4.0)))
