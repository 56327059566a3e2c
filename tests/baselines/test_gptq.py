import pytest
import torch

from gqsa.baselines import BaselineConfig, gptq_layer, rtn_layer
from gqsa.solver.prune_quant import output_error

from .synthetic import dequantize_result, make_layer


@pytest.mark.parametrize("bits, group_size", [(4, 128), (3, 128), (2, 64)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_with_margin(layer, bits, group_size, act_order):
    W, acc = layer
    cfg = BaselineConfig("gptq", bits=bits, group_size=group_size, act_order=act_order)
    res = gptq_layer(W, acc, cfg)
    rtn = rtn_layer(W, acc, BaselineConfig("rtn", bits=bits, group_size=group_size))
    assert res.codes.min() >= 0 and res.codes.max() <= 2 ** bits - 1
    torch.testing.assert_close(dequantize_result(res, group_size), res.weight)
    assert res.keep.all()
    e_gptq, e_rtn = output_error(W, res.weight, acc.H), output_error(W, rtn.weight, acc.H)
    assert e_gptq < 0.5 * e_rtn, (e_gptq, e_rtn)


def test_short_last_group_and_dead_inputs():
    W, acc = make_layer(n=64, k=192)  # group 128: the last group has 64 columns
    acc.H[:, 5] = 0
    acc.H[5, :] = 0  # input 5 never fired
    res = gptq_layer(W, acc, BaselineConfig("gptq", bits=3, group_size=128))
    assert res.scales.shape == (64, 2)
    assert (res.weight[:, 5] == 0).all()
    torch.testing.assert_close(dequantize_result(res, 128), res.weight)


def test_weight_is_not_modified(layer):
    W, acc = layer
    before = W.clone()
    gptq_layer(W, acc, BaselineConfig("gptq", bits=2, group_size=64))
    assert torch.equal(W, before)
