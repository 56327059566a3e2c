import pytest

from gqsa.config import GQSAConfig


def test_defaults_round_trip_through_dict():
    c = GQSAConfig(sparsity=0.3, bits=3, balance="layer", mask="static", skip=("lm_head", "q_proj"))
    d = c.to_dict()
    assert d["quant_method"] == "gqsa"
    assert GQSAConfig.from_dict(d) == c


@pytest.mark.parametrize("kwargs, words", [
    ({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"), ({"bits": 5}, "bits"),
    ({"group_size": 12}, "group_size"), ({"balance": "col"}, "balance"), ({"saliency": "x"}, "saliency"),
    ({"damp": 0.0}, "damp"), ({"block_size": 24}, "block_size"), ({"version": 99}, "version"),
])
def test_bad_values_raise_clear_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GQSAConfig(**kwargs)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="sparsty"):
        GQSAConfig.from_dict({"sparsty": 0.5})
    with pytest.raises(TypeError):
        GQSAConfig(sparsty=0.5)


def test_skips_matches_name_suffixes():
    c = GQSAConfig(skip=("lm_head", "mlp.down_proj"))
    assert c.skips("lm_head") and c.skips("model.layers.0.mlp.down_proj")
    assert not c.skips("model.layers.0.mlp.up_proj")


def test_sparsity_ramp_spreads_sparsity_over_depth_with_the_same_mean():
    c = GQSAConfig(sparsity=0.5, sparsity_ramp=0.6, allocation="uniform")
    per_block = [c.block_sparsity(i, 5) for i in range(5)]
    assert per_block == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8])
    assert sum(per_block) / 5 == pytest.approx(0.5)
    assert c.for_block(0, 5).sparsity == pytest.approx(0.2) and c.for_block(0, 5).sparsity_ramp == 0.0
    assert GQSAConfig(sparsity=0.5).block_sparsity(3, 5) == 0.5 and c.block_sparsity(0, 1) == 0.5
    assert GQSAConfig.from_dict(c.to_dict()) == c
    assert GQSAConfig.from_dict({k: v for k, v in GQSAConfig().to_dict().items() if k != "sparsity_ramp"}) \
        == GQSAConfig()  # configs saved before the option load unchanged


@pytest.mark.parametrize("kwargs, words", [
    ({"sparsity_ramp": -0.1}, "sparsity_ramp"), ({"sparsity_ramp": 1.5}, "sparsity_ramp"),
    ({"sparsity": 0.6, "sparsity_ramp": 0.7}, "every group"),
])
def test_bad_ramps_raise(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GQSAConfig(**kwargs)


def test_defaults_and_configs_saved_before_the_options():
    """Act-order and OWL are the defaults; a config saved before those options existed keeps the
    behaviour of its time (uniform, left to right), and the adaptive mask turns act-order off."""
    c = GQSAConfig()
    assert c.allocation == "owl" and c.act_order is True and c.act_order_grids == "compensated"
    assert GQSAConfig(mask="adaptive").act_order is False
    old = {k: v for k, v in c.to_dict().items() if k not in ("allocation", "act_order", "act_order_grids")}
    legacy = GQSAConfig.from_dict(old)
    assert legacy.allocation == "uniform" and legacy.act_order is False and legacy.act_order_grids == "original"
    morning = {k: v for k, v in c.to_dict().items() if k != "act_order_grids"}  # act-order, before the grid choice
    assert GQSAConfig.from_dict(morning).act_order and GQSAConfig.from_dict(morning).act_order_grids == "original"
    with pytest.raises(ValueError, match="act_order_grids must be one of"):
        GQSAConfig(act_order_grids="pruned")
    assert GQSAConfig.from_dict(c.to_dict()) == c
