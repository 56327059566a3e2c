import pytest

from gqsa.baselines import BaselineConfig, baseline_bits_per_weight

K = 4096


@pytest.mark.parametrize("cfg, expected", [
    (BaselineConfig("rtn", bits=4, group_size=128), 4 + 20 / 128),
    (BaselineConfig("gptq", bits=2, group_size=64), 2 + 18 / 64),
    (BaselineConfig("gptq", bits=2, group_size=64, scale_format="log8"), 2 + 10 / 64 + 8 / K + 32 / K**2),
    (BaselineConfig("rtn", bits=3, group_size=128, scale_format="log8"), 3 + 11 / 128 + 8 / K + 32 / K**2),
    (BaselineConfig("sparsegpt", pattern="2:4", bits=16), 0.5 * 16 + 0.5 * 2),
    (BaselineConfig("sparsegpt", pattern="2:4", bits=4, group_size=128), 0.5 * 4 + 0.5 * 2 + 20 / 128),
    (BaselineConfig("wanda", pattern="unstructured", sparsity=0.5), 1 + 8),
    (BaselineConfig("sparsegpt", pattern="unstructured", sparsity=0.5, bits=4), 1 + 2 + 20 / 128),
])
def test_bits_per_weight_convention(cfg, expected):
    assert baseline_bits_per_weight(cfg, [(K, K)]) == pytest.approx(expected)


def test_short_last_group_costs_a_whole_scale():
    cfg = BaselineConfig("rtn", bits=4, group_size=128)
    assert baseline_bits_per_weight(cfg, [(10, 576)]) == pytest.approx(4 + 5 * 20 / 576)
