import pytest

from gqsa.baselines import BaselineConfig, make_config


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="nope"), "method must be one of"),
    (dict(method="rtn", pattern="2:4"), "takes pattern dense"),
    (dict(method="gptq", pattern="unstructured", sparsity=0.5), "takes pattern dense"),
    (dict(method="sparsegpt", pattern="unstructured"), "sparsity in \\(0, 1\\)"),
    (dict(method="sparsegpt", pattern="2:4", sparsity=0.3), "fixes sparsity at 0.5"),
    (dict(method="sparsegpt", pattern="4:2"), "0 < N < M"),
    (dict(method="wanda", pattern="2:4", bits=4), "wanda prunes only"),
    (dict(method="rtn", bits=16), "rtn needs bits < 16"),
    (dict(method="gptq", bits=5), "bits must be one of"),
    (dict(method="gptq", group_size=96), "multiple of group_size"),
    (dict(method="sparsegpt", pattern="2:4", act_order=True), "act_order applies to gptq only"),
    (dict(method="gptq", damp=0.0), "damp must be in"),
])
def test_invalid_configs_raise_naming_the_constraint(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BaselineConfig(**kwargs)


def test_defaults_per_method():
    assert make_config("gptq").bits == 4 and make_config("gptq").group_size == 128
    assert make_config("sparsegpt").pattern == "unstructured" and make_config("sparsegpt").sparsity == 0.5
    assert make_config("wanda", pattern="2:4").target_sparsity == 0.5
    assert make_config("gqsa").group_size == 16
    with pytest.raises(ValueError, match="gqsa takes pattern 'group'"):
        make_config("gqsa", pattern="2:4")


def test_config_round_trips_through_dict():
    cfg = BaselineConfig("sparsegpt", pattern="2:4", bits=4, group_size=64)
    assert BaselineConfig(**cfg.to_dict()) == cfg
